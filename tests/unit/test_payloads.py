"""Personalized messages (issue #16): what a payload holds, each destination's part of it under
its size limit, and the engine computing it once per emit, only when a destination asks."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import DestinationSettings, Settings, parse_settings
from operators import metrics
from operators import profile as prof
from operators.engine import Engine, build_index
from operators.payloads import Wants, attribute_value, payload, personalize, wants_of
from operators.store import MemoryStore
from schemas.records import AudienceChange
from tests.unit.steps.helpers import Feed

H = 3_600_000
CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
segments:
  - {id: buyers, rule: 'exists(event.eventType == "buy")'}
  - {id: big, rule: 'sum(event.total, event.eventType == "buy") > 100'}
  - {id: busy, rule: 'count(event.eventType == "view", within="1h") >= 2'}
traits:
  - {name: spent, value: 'sum(event.total, event.eventType == "buy")'}
  - {name: views, value: 'count(event.eventType == "view", within="1h")'}
  - {name: unused, value: 'count(event.eventType == "zzz")'}
"""
EMAIL = """\
destinations:
  - {name: email, kind: file, path: e.jsonl, attributes: [name.first, address],
     traits: [spent, views], event: true}
  - {name: ads, kind: file, path: a.jsonl, attributes: [tier]}
"""


def settings(destinations: str = EMAIL) -> Settings:
    return parse_settings(CONFIG + destinations, Path("/c.yaml"), {}, {})


def dest(**kw: Any) -> DestinationSettings:
    return DestinationSettings(name="d", kind="file", path=Path("x"), **kw)


def ev(eid: str, kind: str, ts: int, email: str, **extra: Any) -> dict[str, Any]:
    ids = {"Email": [{"id": email}]}
    return {"_id": eid, "eventType": kind, "timestamp": ts, "identityMap": ids, **extra}


def audience(out: list[Any]) -> list[AudienceChange]:
    return [o for o in out if isinstance(o, AudienceChange)]


# -- pure ------------------------------------------------------------------------------------


def test_wants_are_the_union_of_the_destinations_in_order() -> None:
    wants = wants_of(settings().destinations)
    assert wants == Wants(("name.first", "address", "tier"), ("spent", "views"), True)
    assert not wants_of(settings("").destinations)
    assert not Wants() and Wants(event=True)
    projection = DestinationSettings(name="p", kind="profiles", path=Path("p"))
    assert not wants_of([projection, dest()])


def test_an_attribute_is_a_scalar_a_list_an_object_or_null() -> None:
    profile = prof.new_profile()
    profile["attrs"] = {
        "name.first": "Danny",
        "tags": ["a", "b"],
        "one": ["x"],
        "address.city": "Portland",
        "address.geo.lat": 45.5,
        "orders": [{"sku": "S1"}, {"sku": "S2"}],
    }
    assert attribute_value(profile, "name.first") == "Danny"
    assert attribute_value(profile, "tags") == ["a", "b"]
    assert attribute_value(profile, "one") == "x"
    assert attribute_value(profile, "orders.sku") == ["S1", "S2"]  # through lists
    assert attribute_value(profile, "address") == {"city": "Portland", "geo": {"lat": 45.5}}
    assert attribute_value(profile, "name.last") is None
    assert attribute_value(profile, "nam") is None  # a prefix of a name is not its parent


def test_a_payload_holds_only_what_is_wanted_and_reads_only_the_named_traits() -> None:
    index = build_index(settings())
    profile = prof.new_profile()
    profile["attrs"] = {"tier": "gold"}
    assert payload(profile, index, 0, {"e": 1}, Wants(("tier",))) == {
        "attributes": {"tier": "gold"}
    }
    got = payload(profile, index, 0, {"e": 1}, Wants(traits=("spent",), event=True))
    assert got == {"traits": {"spent": 0}, "event": {"e": 1}}
    assert payload(profile, index, 0, None, Wants(event=True)) == {"event": None}


CHANGE = AudienceChange(
    id="c1",
    segment_id="buyers",
    status="entered",
    profile_id="p_1",
    identities={"Email": ["a@x.com"]},
    event_time_ms=0,
    emitted_at_ms=0,
    reason="event:e1",
    sequence=1,
)
PAYLOAD = {
    "attributes": {"name.first": "Danny", "tier": "gold"},
    "traits": {"spent": 120.5, "views": 2},
    "event": {"eventType": "buy", "items": ["x" * 300]},
}


def test_each_destination_gets_its_own_part() -> None:
    doc = CHANGE.to_dict()
    mine = orjson.loads(personalize(doc, PAYLOAD, dest(attributes=("tier", "missing"))))
    assert mine == {**doc, "attributes": {"tier": "gold", "missing": None}}
    both = dest(traits=("views",), event=True)
    assert orjson.loads(personalize(doc, PAYLOAD, both)) == {
        **doc,
        "traits": {"views": 2},
        "event": PAYLOAD["event"],
    }
    assert personalize(doc, PAYLOAD, dest()) == orjson.dumps(doc)  # asks for nothing
    # Asked for, but the change was made when no destination asked (an older outbox).
    assert personalize(doc, None, both) == orjson.dumps(doc)
    assert doc == CHANGE.to_dict()  # nothing mutated


def _omitted(part: str) -> float:
    value = metrics.PAYLOAD_OMITTED.labels("d", part)._value.get()
    return float(value)


def test_over_the_limit_event_then_traits_then_attributes_are_omitted() -> None:
    doc = CHANGE.to_dict()
    wants: dict[str, Any] = {"attributes": ("name.first",), "traits": ("spent",), "event": True}
    full = personalize(doc, PAYLOAD, dest(**wants))
    assert orjson.loads(full)["event"] == PAYLOAD["event"]
    exact = personalize(doc, PAYLOAD, dest(**wants, max_payload_bytes=len(full)))
    assert exact == full  # at the limit is within it

    before = {part: _omitted(part) for part in ("event", "traits", "attributes")}
    no_event = orjson.loads(personalize(doc, PAYLOAD, dest(**wants, max_payload_bytes=300)))
    assert "event" not in no_event and no_event["omitted"] == ["event"]
    assert no_event["attributes"] == {"name.first": "Danny"} and no_event["traits"] == {
        "spent": 120.5
    }
    tiny = personalize(doc, PAYLOAD, dest(**wants, max_payload_bytes=1))
    bare = orjson.loads(tiny)
    assert bare == {**doc, "omitted": ["event", "traits", "attributes"]}  # the change still goes
    after = {part: _omitted(part) for part in ("event", "traits", "attributes")}
    assert after == {
        "event": before["event"] + 2,
        "traits": before["traits"] + 1,
        "attributes": before["attributes"] + 1,
    }


def test_a_stored_change_keeps_its_payload_and_an_old_outbox_still_loads() -> None:
    change = AudienceChange(**{**_fields(CHANGE), "payload": PAYLOAD})
    stored = orjson.loads(orjson.dumps(change.to_stored()))
    assert stored[-1] == PAYLOAD
    assert AudienceChange.from_stored(stored) == change
    assert pickle.loads(pickle.dumps(change)) == change
    old = stored[:11]  # written before payloads
    assert AudienceChange.from_stored(old) == CHANGE and CHANGE.payload is None
    assert "payload" not in change.to_dict()


def _fields(change: AudienceChange) -> dict[str, Any]:
    return {name: getattr(change, name) for name in AudienceChange.__dataclass_fields__}


# -- the engine ------------------------------------------------------------------------------


def test_the_changes_of_one_record_share_one_payload_with_its_event() -> None:
    config = settings()
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    crm = {"email": "a@x.com", "name": {"first": "Danny"}, "address": {"city": "Portland"}}
    engine.process(0, [feed("crm", crm)], 0)
    buy = ev("e1", "buy", 1_000, "a@x.com", total=150, items=[{"sku": "S1"}])
    out = audience(engine.process(0, [feed("web", buy)], 0))
    assert sorted((c.segment_id, c.status) for c in out) == [
        ("big", "entered"),
        ("buyers", "entered"),
    ]
    first, second = out
    assert first.payload is second.payload  # computed once per emit
    assert first.payload == {
        "attributes": {
            "name.first": "Danny",
            "address": {"city": "Portland"},
            "tier": None,
        },
        "traits": {"spent": 150, "views": 0},
        "event": buy,
    }


def test_a_change_a_timer_caused_has_no_event_and_traits_at_the_timer() -> None:
    config = settings()
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    views = [ev("v1", "view", 0, "a@x.com"), ev("v2", "view", 10 * 60_000, "a@x.com")]
    entered = audience(engine.process(0, [feed("web", body) for body in views], 0))
    assert entered[0].payload is not None
    assert entered[0].payload["traits"]["views"] == 2
    assert entered[0].payload["event"]["_id"] == "v2"
    out = engine.process(0, [feed("web", ev("o1", "view", 3 * H, "other@x.com"))], 0)
    (exit_,) = [c for c in audience(out) if c.segment_id == "busy" and c.reason == "timer"]
    assert exit_.payload is not None
    assert exit_.payload["event"] is None
    assert exit_.payload["traits"]["views"] == 1  # the first view left the hour at 1h


def test_no_payload_when_no_destination_asks_nor_for_a_forgotten_person() -> None:
    plain = settings("destinations:\n  - {name: all, kind: file, path: a.jsonl}\n")
    engine, feed = Engine(plain, MemoryStore()), Feed(plain)
    out = audience(engine.process(0, [feed("web", ev("e1", "buy", 1_000, "a@x.com"))], 0))
    assert out and all(c.payload is None for c in out)

    config = settings()
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [feed("web", ev("e1", "buy", 1_000, "a@x.com"))], 0)
    gone = engine.forget(0, ("Email", "a@x.com"), 0)
    assert gone is not None
    exits = audience(gone)
    assert exits and all(c.reason == "delete" and c.payload is None for c in exits)


@pytest.mark.parametrize("event", [True, False])
def test_the_event_alone_is_a_payload(event: bool) -> None:
    flag = "true" if event else "false"
    config = settings(f"destinations:\n  - {{name: e, kind: file, path: e.jsonl, event: {flag}}}\n")
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    buy = ev("e1", "buy", 1_000, "a@x.com", total=150)
    out = audience(engine.process(0, [feed("web", buy)], 0))
    assert out[0].payload == ({"event": buy} if event else None)
