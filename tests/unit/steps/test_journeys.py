"""Journeys on the engine over an in-memory store (DESIGN §12): entries by event and by
segment, waits as timers, exit_when at once, re-entry, holdout, caps, late sends, versions,
merges and deletes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import ConfigError, Settings, parse_settings
from operators.destinations import render_send
from operators.engine import Engine, build_index
from operators.journeys import held_out, merge_state
from operators.rules import RuleErrors
from operators.steps.profiles import profile_key
from operators.store import MemoryStore
from schemas.records import AudienceChange, JourneySend
from tests.unit.steps.helpers import Feed

H = 3_600_000
D = 24 * H
T0 = 1_780_000_000_000  # 2026-05-28: the tests' wall clock is near their event times

BASE = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
segments:
  - {id: carted, rule: 'absent(event.eventType == "buy", after=event.eventType == "add", within="30m")'}
  - {id: vip, rule: 'profile.tier == "vip"'}
destinations:
  - {name: email, kind: file, path: email.jsonl, segments: []}
  - {name: sms, kind: file, path: sms.jsonl, segments: []}
"""

CART = """\
journeys:
  - id: cart
    trigger: {event: 'event.eventType == "add"'}
    exit_when: 'exists(event.eventType == "buy", within="2d")'
    steps:
      - send: {destination: email, message: cart-1}
      - wait: 1d
      - if: 'profile.tier == "vip"'
        then: [{send: {destination: email, message: cart-vip}}]
        else: [{send: {destination: sms, message: cart-2}}]
"""


def make(extra: str = CART) -> Settings:
    return parse_settings(BASE + extra, Path("/c.yaml"), {}, {})


def ev(eid: str, kind: str, ts: int, ecid: str, **more: Any) -> dict[str, Any]:
    ids: dict[str, Any] = {"ECID": [{"id": ecid}]}
    if "email" in more:
        ids["Email"] = [{"id": more.pop("email")}]
    return {"_id": eid, "eventType": kind, "timestamp": ts, "identityMap": ids, **more}


def sends(out: list[Any]) -> list[tuple[str, str, str]]:
    return [(s.journey_id, s.step, s.message) for s in out if isinstance(s, JourneySend)]


def state(engine: Engine, ecid: str) -> dict[str, Any]:
    raw = engine.store.get(profile_key(("ECID", ecid), engine.settings.shards))
    assert raw is not None
    data: dict[str, Any] = orjson.loads(raw)["j"]
    return data


def test_cart_journey_sends_then_waits_then_branches() -> None:
    settings = make()
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    assert sends(out) == [("cart", "1", "cart-1")]
    (send,) = [s for s in out if isinstance(s, JourneySend)]
    assert send.destination == "email" and send.event_time_ms == T0
    assert state(engine, "d1")["due"] == T0 + D
    assert sends(engine.advance(0, T0 + D - 1, T0 + D - 1)) == []
    # A day later the wait ends; not a vip: the else branch.
    out = engine.advance(0, T0 + D, T0 + D)
    assert sends(out) == [("cart", "3.else.1", "cart-2")]
    j = state(engine, "d1")
    assert j["i"] == {} and j["n"]["cart"] == {
        "entered": 1,
        "sent": 2,
        "sent:1": 1,
        "sent:3.else.1": 1,
        "completed": 1,
    }


def test_a_buyer_during_the_wait_exits_at_once_and_gets_no_reminder() -> None:
    settings = make()
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    out = engine.process(0, [feed("web", ev("e2", "buy", T0 + H, "d1"))], T0 + H)
    assert sends(out) == []
    j = state(engine, "d1")
    assert j["i"] == {} and j["n"]["cart"]["exited_exit_when"] == 1
    assert sends(engine.advance(0, T0 + 2 * D, T0 + 2 * D)) == []


def test_send_ids_are_deterministic_across_runs() -> None:
    def run() -> list[str]:
        settings = make()
        engine, feed = Engine(settings, MemoryStore()), Feed(settings)
        out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
        out += engine.advance(0, T0 + D, T0 + D)
        return [s.id for s in out if isinstance(s, JourneySend)]

    first = run()
    assert len(first) == 2 and len(set(first)) == 2 and first == run()


def test_no_reentry_while_in_flight_and_min_gap_after() -> None:
    settings = make(CART.replace("    exit_when", "    reentry: {min_gap: 3d}\n    exit_when"))
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    out = engine.process(0, [feed("web", ev("e2", "add", T0 + H, "d1"))], T0 + H)
    assert sends(out) == []  # in flight: one instance per key
    engine.advance(0, T0 + D, T0 + D)  # completes
    out = engine.process(0, [feed("web", ev("e3", "add", T0 + 2 * D, "d1"))], T0 + 2 * D)
    assert sends(out) == []  # 2 days after the last entry: refused by min_gap 3d
    out = engine.process(0, [feed("web", ev("e4", "add", T0 + 3 * D, "d1"))], T0 + 3 * D)
    assert sends(out) == [("cart", "1", "cart-1")]
    assert state(engine, "d1")["n"]["cart"]["reentry_refused"] == 1


def test_once_and_max_per() -> None:
    once = make(CART.replace("    exit_when", "    reentry: {once: true}\n    exit_when"))
    engine, feed = Engine(once, MemoryStore()), Feed(once)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    engine.advance(0, T0 + D, T0 + D)
    out = engine.process(0, [feed("web", ev("e2", "add", T0 + 400 * D, "d1"))], T0 + 400 * D)
    assert sends(out) == []  # no hidden expiry
    capped = make(CART.replace("    exit_when", "    reentry: {max: 2, per: 10d}\n    exit_when"))
    engine, feed = Engine(capped, MemoryStore()), Feed(capped)
    entered = []
    for day in range(0, 8, 2):
        at = T0 + day * D
        out = engine.process(0, [feed("web", ev(f"a{day}", "add", at, "d1"))], at)
        entered.append(bool(sends(out)))
        engine.advance(0, at + D, at + D)
    assert entered == [True, True, False, False]
    out = engine.process(0, [feed("web", ev("late", "add", T0 + 11 * D, "d1"))], T0 + 11 * D)
    assert sends(out)  # the first entry left the 10-day window


def test_key_makes_one_instance_per_cart() -> None:
    settings = make(CART.replace("    exit_when", "    key: event.cart.id\n    exit_when"))
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1", cart={"id": "A"}))], T0)
    out += engine.process(0, [feed("web", ev("e2", "add", T0 + 1, "d1", cart={"id": "B"}))], T0)
    out += engine.process(0, [feed("web", ev("e3", "add", T0 + 2, "d1", cart={"id": "A"}))], T0)
    assert sends(out) == [("cart", "1", "cart-1"), ("cart", "1", "cart-1")]
    assert len({s.instance_id for s in out if isinstance(s, JourneySend)}) == 2


def test_segment_trigger_starts_on_entry() -> None:
    settings = make(
        """\
journeys:
  - id: carted
    trigger: {segment: carted}
    steps: [{send: {destination: email, message: come-back}}]
"""
    )
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    out = engine.advance(0, T0 + H, T0 + H)  # the absent window closes: entered, a timer
    assert [c.segment_id for c in out if isinstance(c, AudienceChange)] == ["carted"]
    assert sends(out) == [("carted", "1", "come-back")]


def test_a_late_send_is_recorded_not_sent_unless_late_send() -> None:
    settings = make()
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "add", T0 - 30 * D, "d1"))], T0)
    assert sends(out) == []
    out = engine.advance(0, T0 - 29 * D, T0)
    assert sends(out) == []
    assert state(engine, "d1")["n"]["cart"] == {
        "entered": 1,
        "late": 2,
        "late:1": 1,
        "late:3.else.1": 1,
        "completed": 1,
    }
    loose = make(CART.replace("    exit_when", "    late: send\n    exit_when"))
    engine, feed = Engine(loose, MemoryStore()), Feed(loose)
    out = engine.process(0, [feed("web", ev("e1", "add", T0 - 30 * D, "d1"))], T0)
    assert sends(out) == [("cart", "1", "cart-1")]


def test_holdout_is_tracked_never_sent() -> None:
    settings = make(CART.replace("    exit_when", "    holdout: 100%\n    exit_when"))
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    out += engine.advance(0, T0 + D, T0 + D)
    assert sends(out) == []
    assert state(engine, "d1")["n"]["cart"]["held_out"] == 2


def test_holdout_share_is_deterministic_and_near_its_percentage() -> None:
    picked = [held_out(f"p_{i}", "cart", 500) for i in range(20_000)]
    assert 0.04 < sum(picked) / len(picked) < 0.06
    assert picked == [held_out(f"p_{i}", "cart", 500) for i in range(20_000)]


def test_global_cap_priority_decides_and_loser_is_capped() -> None:
    settings = make(
        """\
journey_caps: {per_profile: 1, per: 1d}
journeys:
  - id: low
    priority: 1
    trigger: {event: 'event.eventType == "add"'}
    steps: [{send: {destination: sms, message: low}}]
  - id: high
    priority: 9
    trigger: {event: 'event.eventType == "add"'}
    steps: [{send: {destination: email, message: high}}]
"""
    )
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    assert sends(out) == [("high", "1", "high")]
    assert state(engine, "d1")["n"]["low"]["capped"] == 1
    out = engine.process(0, [feed("web", ev("e2", "add", T0 + D + 1, "d1"))], T0 + D)
    assert sends(out) == [("high", "1", "high")]  # a new day: one slot again


def test_merge_moves_a_waiting_instance_to_the_survivor() -> None:
    settings = make()
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    out = engine.process(0, [feed("web", ev("e2", "view", T0 + H, "d1", email="a@x.com"))], T0)
    assert sends(out) == []
    out = engine.advance(0, T0 + D, T0 + D)
    assert sends(out) == [("cart", "3.else.1", "cart-2")]  # woke on the merged profile


def test_removed_journey_ends_its_instances_and_edit_keeps_version() -> None:
    store = MemoryStore()
    settings = make()
    engine, feed = Engine(settings, store), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    first = next(s for s in engine.outbox_after(0, 0) if isinstance(s, JourneySend))
    # Edited: the message of the last step changes; the instance finishes on its version.
    edited = make(CART.replace("cart-2", "cart-2b"))
    engine = Engine(edited, store)
    out = engine.advance(0, T0 + D, T0 + D)
    assert sends(out) == [("cart", "3.else.1", "cart-2")]
    assert [s.version for s in out if isinstance(s, JourneySend)] == [first.version]
    # Removed: the next instance ends at its wake-up, nothing sent.
    engine = Engine(edited, store)
    engine.process(0, [feed("web", ev("e9", "add", T0 + 2 * D, "d1"))], T0 + 2 * D)
    engine = Engine(make(""), store)
    out = engine.advance(0, T0 + 3 * D, T0 + 3 * D)
    assert sends(out) == []
    assert state(engine, "d1")["n"]["cart"]["exited_removed"] == 1


def test_on_edit_exit_ends_old_instances() -> None:
    store = MemoryStore()
    settings = make(CART.replace("    exit_when", "    on_edit: exit\n    exit_when"))
    engine, feed = Engine(settings, store), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    edited = make(
        CART.replace("    exit_when", "    on_edit: exit\n    exit_when").replace("1d", "2d")
    )
    engine = Engine(edited, store)
    assert sends(engine.advance(0, T0 + D, T0 + D)) == []
    assert state(engine, "d1")["n"]["cart"]["exited_edited"] == 1


def test_forget_ends_instances() -> None:
    settings = make()
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    assert engine.forget(0, ("ECID", "d1"), T0) is not None
    assert sends(engine.advance(0, T0 + 2 * D, T0 + 2 * D)) == []


def test_wait_until_a_local_time_across_a_dst_change() -> None:
    settings = make(
        """\
journeys:
  - id: morning
    trigger: {event: 'event.eventType == "like"'}
    late: send
    steps:
      - wait: {until: "09:00", timezone: profile.timezone}
      - send: {destination: email, message: good-morning}
"""
    )
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    # Berlin leaves summer time on 2026-10-25 at 03:00 local. An add late on the 24th waits
    # for 09:00 on the 25th, which is 08:00 UTC (CET), not 07:00 (CEST).
    crm = {"email": "b@x.com", "timezone": "Europe/Berlin", "ecid": "d1"}
    at = int(datetime(2026, 10, 24, 22, 0, tzinfo=UTC).timestamp() * 1000)
    engine.process(0, [feed("crm", crm)], at)
    add = ev("e1", "like", at, "d1", email="b@x.com")
    assert sends(engine.process(0, [feed("web", add)], at)) == []
    due = int(datetime(2026, 10, 25, 8, 0, tzinfo=UTC).timestamp() * 1000)
    assert engine.next_timer_ms() == due
    assert sends(engine.advance(0, due - 1, due)) == []
    assert sends(engine.advance(0, due, due)) == [("morning", "2", "good-morning")]


def test_config_errors_name_the_journey_and_line() -> None:
    with pytest.raises(ConfigError) as bad:
        make(CART.replace("destination: sms", "destination: smss"))
    assert "unknown destination 'smss'" in str(bad.value) and "line" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        make(CART.replace("{event:", "{segment: nope, event:"))
    with pytest.raises(RuleErrors) as rules:
        build_index(make(CART.replace('"buy", within', '"buy", within=')))
    assert "journey 'cart' exit_when" in str(rules.value)


def test_a_wait_ending_before_an_event_runs_first_though_another_partition_lags() -> None:
    """Per profile, steps and events happen in event-time order: the reminder due a day after
    the add goes out before a purchase two days later, whether or not the slowest partition
    has moved event time past the reminder (1 and 2 workers send the same)."""

    def run(lagging: bool) -> list[tuple[str, str, str]]:
        settings = make(CART.replace("    exit_when", "    late: send\n    exit_when"))
        engine, feed = Engine(settings, MemoryStore()), Feed(settings)
        out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
        if lagging:  # partition 1 holds event time at T0
            other = feed("web", ev("x", "view", T0, "z9"), partition=1)
            out += engine.process(0, [other], T0)
        buy = ev("e2", "buy", T0 + 2 * D, "d1")
        out += engine.process(0, [feed("web", buy)], T0 + 2 * D)
        return sends(out)

    assert (
        run(lagging=False)
        == run(lagging=True)
        == [
            ("cart", "1", "cart-1"),
            ("cart", "3.else.1", "cart-2"),
        ]
    )


def test_a_send_carries_the_name_and_the_cart_its_destination_asks_for() -> None:
    text = (BASE + CART).replace(
        "{name: email, kind: file, path: email.jsonl, segments: []}",
        "{name: email, kind: file, path: email.jsonl, segments: [],"
        " attributes: [person.firstName], event: true}",
    )
    settings = parse_settings(text, Path("/c.yaml"), {}, {})
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("crm", {"email": "a@x.com", "person": {"firstName": "Ann"}})], T0)
    items = [{"SKU": "LLMH09", "quantity": 1}]
    add = ev("e1", "add", T0, "d1", email="a@x.com", productListItems=items)
    out = engine.process(0, [feed("web", add)], T0)
    out += engine.advance(0, T0 + D, T0 + D)
    first, second = [s for s in out if isinstance(s, JourneySend)]
    assert first.payload is not None and first.payload["attributes"] == {"person.firstName": "Ann"}
    assert first.payload["event"]["productListItems"] == items
    assert second.destination == "sms" and second.payload is None  # sms asks for nothing
    body = orjson.loads(render_send(first, settings.destinations[0]))
    assert body["attributes"]["person.firstName"] == "Ann" and body["event"]["_id"] == "e1"
    assert body["type"] == "journey_send" and body["id"] == first.id


def test_a_purchase_ahead_of_a_lagging_partition_exits_at_once() -> None:
    """exit_when is judged as of the record that may end the instance, not the stream's event
    time: with another partition holding event time back (several workers), a purchase during
    the wait still ends the instance at once, and the next add finds none in flight, as on one
    worker (the totals and the trace agree)."""

    def run(lagging: bool) -> dict[str, Any]:
        settings = make()
        engine, feed = Engine(settings, MemoryStore()), Feed(settings)
        engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
        if lagging:  # partition 1 holds event time at T0
            other = feed("web", ev("x", "view", T0, "z9"), partition=1)
            engine.process(0, [other], T0)
        engine.process(0, [feed("web", ev("e2", "buy", T0 + H, "d1"))], T0 + H)
        engine.process(0, [feed("web", ev("e3", "add", T0 + 2 * H, "d1"))], T0 + 2 * H)
        return state(engine, "d1")

    calm, lagging = run(lagging=False), run(lagging=True)
    assert calm["i"] == {} and calm["n"]["cart"]["exited_exit_when"] == 2
    assert lagging["i"] == calm["i"] and lagging["n"] == calm["n"]
    assert [line[3] for line in lagging["log"]] == [line[3] for line in calm["log"]]


def test_records_behind_event_time_still_run_in_their_order() -> None:
    """Per profile, journeys run in event-time order though the stream's event time is ahead
    of the profile's records (a partition read late; on several processes, a shard whose
    commands come after another's later ones): a second add during the first instance's wait
    starts nothing, and the wait ends after it, on the profile's timer."""

    def run(behind: bool) -> list[tuple[str, str, str]]:
        settings = make(CART.replace("    exit_when", "    late: send\n    exit_when"))
        engine, feed = Engine(settings, MemoryStore()), Feed(settings)
        other = feed("web", ev("x", "view", T0 + 3 * D, "z"), partition=1)
        out = engine.process(0, [other], T0) if behind else []  # event time three days on
        out += engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
        out += engine.process(0, [feed("web", ev("e2", "add", T0 + H, "d1"))], T0)
        if not behind:
            out += engine.process(0, [other], T0)
        out += engine.finish(0, T0)
        assert totals(state(engine, "d1")) == {"entered": 1, "sent": 2, "completed": 1}
        return sends(out)

    assert (
        run(behind=False)
        == run(behind=True)
        == [
            ("cart", "1", "cart-1"),
            ("cart", "3.else.1", "cart-2"),
        ]
    )


def test_an_add_delivered_twice_starts_no_second_instance() -> None:
    """An event applied before (its `_id`: a producer's retry after a broker outage) starts
    no instance again, so no second reminder with a new id goes out."""
    settings = make(CART.replace("    exit_when", "    late: send\n    exit_when"))
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    out += engine.advance(0, T0 + 2 * D, T0 + 2 * D)
    assert sends(out) == [("cart", "1", "cart-1"), ("cart", "3.else.1", "cart-2")]
    again = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0 + 2 * D)
    assert sends(again) == [] and engine.stats.duplicates == 1
    assert totals(state(engine, "d1")) == {"entered": 1, "sent": 2, "completed": 1}


def totals(j: dict[str, Any]) -> dict[str, int]:
    """The cart journey's totals by outcome (not those per step, `OUTCOME:STEP`)."""
    return {k: v for k, v in j["n"]["cart"].items() if ":" not in k}


def test_every_wait_ending_before_an_event_runs_before_it() -> None:
    """Two waits end before a purchase that a lagging partition lets in before event time
    reaches them: both run (and both reminders go out) before the purchase is applied, as
    when event time had passed them first."""
    two_waits = """\
journeys:
  - id: cart
    trigger: {event: 'event.eventType == "add"'}
    exit_when: 'exists(event.eventType == "buy")'
    late: send
    steps:
      - wait: 30m
      - send: {destination: email, message: cart-1}
      - wait: 30m
      - send: {destination: email, message: cart-2}
"""

    def run(lagging: bool) -> list[tuple[str, str, str]]:
        settings = make(two_waits)
        engine, feed = Engine(settings, MemoryStore()), Feed(settings)
        out = engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
        if lagging:  # partition 1 holds event time at T0
            other = feed("web", ev("x", "view", T0, "z9"), partition=1)
            out += engine.process(0, [other], T0)
        out += engine.process(0, [feed("web", ev("e2", "buy", T0 + 2 * H, "d1"))], T0 + 2 * H)
        return sends(out)

    assert (
        run(lagging=False)
        == run(lagging=True)
        == [
            ("cart", "2", "cart-1"),
            ("cart", "4", "cart-2"),
        ]
    )


def test_a_segment_entry_carries_the_same_event_by_record_or_by_timer() -> None:
    """The event of a segment-triggered instance is the person's latest event at or before the
    entry: the same whether the entry came with the record (one partition) or on the timer
    as a lagging partition let event time reach it (several workers)."""
    text = BASE.replace(
        "{name: email, kind: file, path: email.jsonl, segments: []}",
        "{name: email, kind: file, path: email.jsonl, segments: [], event: true}",
    ).replace(
        "segments:\n",
        'segments:\n  - {id: browsers, rule: \'count(event.eventType == "view", within="1h") >= 2\'}\n',
    )
    text += """\
journeys:
  - id: welcome
    trigger: {segment: browsers}
    late: send
    steps: [{send: {destination: email, message: welcome}}]
"""

    def run(lagging: bool) -> list[Any]:
        settings = parse_settings(text, Path("/c.yaml"), {}, {})
        engine, feed = Engine(settings, MemoryStore()), Feed(settings)
        out: list[Any] = []
        if lagging:  # partition 1 holds event time back
            other = feed("web", ev("x", "view", T0, "z9"), partition=1)
            out += engine.process(0, [other], T0)
        for i in range(2):
            view = ev(f"v{i}", "view", T0 + (i + 1) * 60_000, "d1")
            out += engine.process(0, [feed("web", view)], T0)
        out += engine.finish(0, T0)
        return [(s.id, (s.payload or {}).get("event")) for s in out if isinstance(s, JourneySend)]

    ones, twos = run(lagging=False), run(lagging=True)
    assert ones == twos and len(ones) == 1
    assert ones[0][1]["_id"] == "v1"


def test_merged_states_keep_the_newest_trace_lines_and_add_up_totals() -> None:
    def state(offset: int) -> dict[str, Any]:
        log = [[offset + i, "cart", "i", "sent", "1", ""] for i in range(40)]
        return {"i": {}, "r": {}, "n": {"cart": {"sent": 40}}, "c": [], "log": log}

    merged, ended = merge_state(state(0), state(1000), 50)
    assert ended == [] and merged["n"]["cart"]["sent"] == 80
    assert len(merged["log"]) == 50 and merged["log"][-1][0] == 1039


def test_an_old_version_whose_exit_rule_reads_inputs_no_longer_kept_ends_edited() -> None:
    """Finishing on the old version is safe only while its rules can be read: an edit whose
    exit_when reads something new ends the old instances (reason edited) rather than judge a
    buyer on inputs no longer kept."""
    store = MemoryStore()
    settings = make()
    engine, feed = Engine(settings, store), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    edited = make(CART.replace('"buy", within="2d"', '"order", within="2d"'))
    engine = Engine(edited, store)
    engine.finish(0, T0)  # the rollout of the edited inputs
    assert sends(engine.advance(0, T0 + D, T0 + D)) == []
    assert state(engine, "d1")["n"]["cart"]["exited_edited"] == 1
    # An edit that keeps the exit rule's inputs lets the instance finish (see above).


def test_an_audience_edit_enters_people_but_starts_no_journey() -> None:
    """Entries an audience edit makes (reason definition) start no instance: nobody was seen
    qualifying, and a mass send must not follow an edit. Entries the data makes still do."""
    welcome = """\
journeys:
  - id: welcome
    trigger: {segment: browsers}
    steps: [{send: {destination: email, message: welcome}}]
"""

    def config(views: int) -> Settings:
        rule = f'count(event.eventType == "view") >= {views}'
        text = BASE.replace("segments:\n", f"segments:\n  - {{id: browsers, rule: '{rule}'}}\n")
        return parse_settings(text + welcome, Path("/c.yaml"), {}, {})

    store = MemoryStore()
    before = config(3)
    engine, feed = Engine(before, store), Feed(before)
    for i in range(2):
        engine.process(0, [feed("web", ev(f"v{i}", "view", T0 + i, "d1"))], T0)
    after = config(2)
    engine = Engine(after, store)
    out = engine.finish(0, T0)  # the rollout: d1 enters browsers, reason definition
    entered = [c for c in out if isinstance(c, AudienceChange) and c.segment_id == "browsers"]
    assert [c.reason for c in entered] == ["definition"] and sends(out) == []
    feed = Feed(after)
    feed.offsets[("web", 0)] = 2
    out = []
    for i in range(2):
        out += engine.process(0, [feed("web", ev(f"w{i}", "view", T0 + 10 + i, "d2"))], T0)
    assert sends(out) == [("welcome", "1", "welcome")]
