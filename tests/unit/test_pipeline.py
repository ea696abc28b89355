"""The read side of the pipeline in one call a batch (`flows.read._DecodeBatch`): what
each input message becomes, and the read-order numbers the engine's event time relies on."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from config.settings import parse_settings
from flows import io
from flows.read import _DecodeBatch
from operators.decode import Decoder
from schemas.records import DeadLetter, Forget, Origin, Record

CONFIG = """\
namespaces: [{name: ECID}, {name: Email, normalize: email}]
sources:
  - {name: web, kind: event, path: w.json}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
"""
START = 1_767_225_600_000


def _decoder() -> Decoder:
    return Decoder.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {}))


def _event(n: int, ts: int) -> bytes:
    return orjson.dumps(
        {
            "_id": f"e{n}",
            "timestamp": ts,
            "eventType": "view",
            "identityMap": {"ECID": [{"id": f"d{n % 3}"}]},
        }
    )


def test_each_message_becomes_a_record_a_forget_or_a_dead_letter() -> None:
    decode = _DecodeBatch(_decoder())
    out = decode(
        [
            (Origin("web", 0, 0), _event(0, START)),
            (Origin("web", 0, 1), b"{not json"),
            (Origin("crm", 0, 0), b'{"email": "A@B.co"}'),
            (Origin(io.PRIVACY_SOURCE, 0, 0), b'{"identity": "Email:a@b.co"}'),
            (Origin("web", 0, 2), _event(2, START)),
        ]
    )
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["Record", "DeadLetter", "Record", "Forget", "Record"]
    assert isinstance(out[1], DeadLetter) and out[1].reason.startswith("not JSON")
    assert isinstance(out[3], Forget) and out[3].identity == ("Email", "a@b.co")
    # Read order per partition, counting only what reaches the engine: the junk line
    # between the two web events takes no number.
    assert [x.seq for x in out if isinstance(x, Record)] == [1, 1, 2]


def test_messages_are_located_by_the_given_function() -> None:
    located: list[str] = []

    def locate(message: tuple[str, bytes]) -> tuple[Origin, bytes]:
        located.append(message[0])
        return Origin("web", 1, len(located)), message[1]

    out = _DecodeBatch(_decoder(), locate)([("a", _event(1, START)), ("b", _event(2, START))])
    assert located == ["a", "b"]
    assert [(x.origin.partition, x.origin.offset, x.seq) for x in out if isinstance(x, Record)] == [
        (1, 1, 1),
        (1, 2, 2),
    ]


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from(["early", "late", "junk"])),
        max_size=40,
    ),
    st.integers(1, 5),
)
def test_read_order_has_no_gaps(items: list[tuple[int, str]], cut: int) -> None:
    """Over any batches, each partition's kept records are numbered 1, 2, 3 … with no gap:
    the engine's event time waits for a missing number, so a gap would stop it for good.
    Records before `--from` and dead letters take no number."""
    decode = _DecodeBatch(_decoder(), start_ms=START)
    offsets = [0, 0]
    messages = []
    for partition, what in items:
        offset = offsets[partition]
        offsets[partition] += 1
        raw = {
            "early": _event(offset, START - 1),
            "late": _event(offset, START + offset),
            "junk": b"[]",
        }[what]
        messages.append((Origin("web", partition, offset), raw))
    out = []
    for i in range(0, len(messages), cut):  # in batches of `cut`
        out.extend(decode(messages[i : i + cut]))
    for partition in (0, 1):
        kept = [x for x in out if isinstance(x, Record) and x.origin.partition == partition]
        assert [x.seq for x in kept] == list(range(1, len(kept) + 1))
        assert len(kept) == sum(1 for p, what in items if p == partition and what == "late")
    assert sum(isinstance(x, DeadLetter) for x in out) == sum(w == "junk" for _, w in items)
