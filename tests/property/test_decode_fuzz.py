"""Fuzzing the decoder: whatever bytes arrive, decode returns a Record or a DeadLetter with a
reason — never raises — and never puts the record's values into the reason."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import parse_settings
from operators.decode import Decoder
from schemas.records import DeadLetter, Origin, Record

CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: Phone, normalize: phone}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {contact.email: Email, contact.phone: Phone, id: ECID}}
"""
DECODER = Decoder.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {}))
SECRET = "zz-secret-value-zz"

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
identity_values = st.one_of(
    st.just(SECRET),
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    json_values,
    st.just(SECRET * 300),
)
events = st.fixed_dictionaries(
    {},
    optional={
        "_id": st.one_of(
            st.text(max_size=12), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.none()
        ),
        "timestamp": st.one_of(
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.text(max_size=25),
            st.just("2026-11-01T00:00:00Z"),
            json_values,
        ),
        "eventType": st.one_of(
            st.text(max_size=10), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.none()
        ),
        "identityMap": st.one_of(
            st.dictionaries(
                st.sampled_from(["Email", "ECID", "Phone", "Odd:ns", ""]),
                st.lists(
                    st.one_of(st.fixed_dictionaries({"id": identity_values}), json_values),
                    max_size=3,
                ),
                max_size=3,
            ),
            json_values,
        ),
        "contact": st.one_of(
            st.fixed_dictionaries({"email": identity_values, "phone": identity_values}), json_values
        ),
        "id": identity_values,
        "extra": json_values,
    },
)


def check(source: str, raw: bytes) -> None:
    out = DECODER.decode(Origin(source, 1, 2), raw)
    assert isinstance(out, Record | DeadLetter)
    if isinstance(out, DeadLetter):
        assert out.reason and SECRET not in out.reason
        assert out.raw == raw
        orjson.loads(out.to_json())
    else:
        assert out.identities
        assert all(ns and ":" not in ns and value for ns, value in out.identities)
        if source == "web":
            assert out.ts_ms is not None and out.event_id and out.event_type


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["web", "crm", "unknown"]), events)
def test_structured_junk(source: str, body: dict[str, object]) -> None:
    check(source, orjson.dumps(body))


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["web", "crm"]), st.binary(max_size=300))
def test_arbitrary_bytes(source: str, raw: bytes) -> None:
    check(source, raw)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["web", "crm"]),
    events,
    st.integers(min_value=0, max_value=200),
    st.binary(min_size=1, max_size=3),
)
def test_corrupted_json(source: str, body: dict[str, object], cut: int, noise: bytes) -> None:
    raw = orjson.dumps(body)
    check(source, raw[:cut] + noise + raw[cut:])


TYPED = Decoder.from_settings(
    parse_settings(
        "namespaces: [{name: ECID}]\nsources:\n  - name: shop\n    kind: event\n    path: s\n"
        "    fields: {a.n: number, a.i: integer, a.s: string, a.b: boolean, a.t: timestamp}\n",
        Path("/c.yaml"),
        {},
        {},
    )
)
_KINDS = {"n": "number", "i": "integer", "s": "string", "b": "boolean", "t": "timestamp"}
typed_values = st.one_of(
    json_values,
    st.from_regex(r"\A *[+-]?[0-9]{0,6}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})? *\Z"),
    st.sampled_from(["TRUE", "false", "2026-11-01T00:00:00Z", "1e999", SECRET]),
)


def _leaves(value: object) -> list[object]:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [] if value is None else [value]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from("nisbt"), typed_values, max_size=5), st.booleans())
def test_declared_types_hold_or_the_record_is_a_dead_letter(
    fields: dict[str, object], in_list: bool
) -> None:
    """Whatever a declared field holds, decode never raises; a record it keeps has every
    declared value of its type; a dead letter names the field and never the value."""
    a: object = [fields, {}] if in_list else fields
    body = {"_id": "e", "eventType": "x", "timestamp": 1, "identityMap": {"ECID": [{"id": "d"}]}}
    out = TYPED.decode(Origin("shop", 0, 1), orjson.dumps({**body, "a": a}))
    if isinstance(out, DeadLetter):
        assert out.reason.startswith("field a.") and SECRET not in out.reason
        return
    assert isinstance(out, Record)
    got = out.parsed["a"][0] if in_list else out.parsed["a"]
    for key, value in got.items():
        kind = _KINDS[key]
        for leaf in _leaves(value):
            if kind == "number":
                assert type(leaf) in (int, float)
            elif kind == "integer":
                assert type(leaf) is int
            elif kind == "string":
                assert type(leaf) is str
            elif kind == "boolean":
                assert type(leaf) is bool
            else:
                assert type(leaf) in (int, float, str)
