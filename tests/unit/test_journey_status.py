"""`cdp journeys status` and `trace`, the read side (operators.journey_status): journeys run
on the engine over a store, then their totals, instances in flight and a person's timeline
read back from the profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from config.settings import Settings
from flows.journeys_commands import render_status, render_trace
from operators import journey_status as js
from operators.engine import Engine
from operators.identity import profile_id
from operators.steps.journeys import LOG_MAX
from operators.steps.profiles import profile_key
from operators.store import MemoryStore, Store, open_state, open_store
from schemas.records import iso_ms
from tests.unit.steps.test_journeys import CART, T0, D, Feed, H, ev, make


def status_of(store: Store, settings: Settings) -> dict[str, js.JourneyStatus]:
    counted = js.tally(js.profiles_with_state(store))
    labels = js.labels_reader(store, settings.journeys)
    return {s.id: s for s in js.statuses(counted, settings.journeys, labels)}


def trace_of(engine: Engine, ecid: str) -> js.Trace:
    raw = engine.store.get(profile_key(("ECID", ecid), engine.settings.shards))
    assert raw is not None
    labels = js.labels_reader(engine.store, engine.settings.journeys)
    return js.trace(profile_id(("ECID", ecid)), orjson.loads(raw).get("j"), labels)


def cart_run() -> tuple[Engine, Settings]:
    """d1: else branch, then enters again and waits; d2 buys during the wait; d3 is a vip."""
    settings = make()
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    vip = {"email": "c@x.com", "tier": "vip"}
    engine.process(0, [feed("crm", vip)], T0)
    adds = [ev(f"a{n}", "add", T0, f"d{n}") for n in (1, 2)]
    adds.append(ev("a3", "add", T0, "d3", email="c@x.com"))
    engine.process(0, [feed("web", add) for add in adds], T0)
    engine.process(0, [feed("web", ev("b2", "buy", T0 + H, "d2"))], T0 + H)
    engine.advance(0, T0 + D, T0 + D)
    engine.process(0, [feed("web", ev("a4", "add", T0 + D + H, "d1"))], T0 + D + H)
    return engine, settings


def test_status_sums_totals_sends_per_step_and_instances_waiting() -> None:
    engine, settings = cart_run()
    cart = status_of(engine.store, settings)["cart"]
    assert cart.configured and cart.version
    assert cart.totals == {"entered": 4, "completed": 2, "sent": 6}
    assert cart.exited == {"exit_when": 1}
    assert cart.steps == {
        "1": {"sent": 4},
        "3.then.1": {"sent": 1},
        "3.else.1": {"sent": 1},
    }
    assert cart.labels["1"] == "send cart-1 to email"
    assert cart.labels["3.else.1"] == "send cart-2 to sms"
    (waiting,) = cart.waiting
    assert (waiting.step, waiting.instances, waiting.version) == ("3", 1, cart.version)
    assert waiting.label == 'if profile.tier == "vip"'
    assert waiting.first_wake_ms == waiting.last_wake_ms == T0 + 2 * D + H
    assert cart.in_flight == 1
    doc = cart.to_json()
    assert doc["steps"]["1"] == {"label": "send cart-1 to email", "sent": 4}
    assert doc["waiting"][0]["first_wake"] == iso_ms(T0 + 2 * D + H)
    text = "\n".join(render_status(cart))
    assert "in flight 1" in text and "exited: exit_when 1" in text
    assert "sends: sent 6, late 0, capped 0, held out 0" in text


def test_trace_is_a_persons_timeline_and_their_waits() -> None:
    engine, _ = cart_run()
    found = trace_of(engine, "d1")
    assert [(x.what, x.step, x.detail) for x in found.lines] == [
        ("entered", "", ""),
        ("sent", "1", "cart-1"),
        ("waiting", "2", f"until {iso_ms(T0 + D)}"),
        ("woke", "3", ""),
        ("branch", "3", "else"),
        ("sent", "3.else.1", "cart-2"),
        ("completed", "", ""),
        ("entered", "", ""),
        ("sent", "1", "cart-1"),
        ("waiting", "2", f"until {iso_ms(T0 + 2 * D + H)}"),
    ]
    assert [x.ms for x in found.lines][-1] == T0 + D + H
    (inst,) = found.in_flight
    assert (inst.journey, inst.step, inst.wakes_ms) == ("cart", "3", T0 + 2 * D + H)
    assert inst.instance == found.lines[-1].instance != found.lines[0].instance
    assert found.totals == {"cart": {"completed": 1, "entered": 2, "sent": 3}}
    assert not found.trimmed
    text = render_trace(found)
    assert text[0] == f"profile {found.profile_id}: 10 lines"
    assert any(line.startswith(iso_ms(T0)) and "sent" in line and "cart-1" in line for line in text)
    assert any("next 3" in line and f"wakes {iso_ms(T0 + 2 * D + H)}" in line for line in text)
    buyer = trace_of(engine, "d2")
    assert buyer.lines[-1].what == "exited" and buyer.lines[-1].detail == "exit_when"
    assert buyer.in_flight == ()


def test_late_held_out_and_capped_are_counted_per_step() -> None:
    late = make()
    engine, feed = Engine(late, MemoryStore()), Feed(late)
    engine.process(0, [feed("web", ev("e1", "add", T0 - 30 * D, "d1"))], T0)
    engine.advance(0, T0 - 29 * D, T0)
    cart = status_of(engine.store, late)["cart"]
    assert cart.totals["late"] == 2 and "sent" not in cart.totals
    assert cart.steps == {"1": {"late": 1}, "3.else.1": {"late": 1}}
    held = make(CART.replace("    exit_when", "    holdout: 100%\n    exit_when"))
    engine, feed = Engine(held, MemoryStore()), Feed(held)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    cart = status_of(engine.store, held)["cart"]
    assert cart.totals == {"entered": 1, "held_out_entered": 1, "held_out": 1}
    assert cart.steps == {"1": {"held_out": 1}} and cart.in_flight == 1
    assert trace_of(engine, "d1").in_flight[0].held_out


def test_a_removed_journey_and_an_old_version_are_shown_with_their_steps() -> None:
    store = MemoryStore()
    settings = make()
    engine, feed = Engine(settings, store), Feed(settings)
    engine.process(0, [feed("web", ev("e1", "add", T0, "d1"))], T0)
    edited = make(CART.replace("if: 'profile.tier", "if: 'profile.level"))
    engine = Engine(edited, store)
    cart = status_of(store, edited)["cart"]
    (waiting,) = cart.waiting
    assert waiting.version != cart.version  # finishes on the version it started
    assert waiting.label == 'if profile.tier == "vip"'  # as that version reads
    assert cart.labels["3"] == 'if profile.level == "vip"'  # as configured now
    assert "(on version " in "\n".join(render_status(cart))
    gone = make("")
    found = status_of(store, gone)
    assert list(found) == ["cart"] and not found["cart"].configured
    assert found["cart"].waiting[0].label == 'if profile.tier == "vip"'
    assert "removed from the config" in render_status(found["cart"])[0]


def test_a_bounded_log_says_so() -> None:
    state: dict[str, Any] = {
        "log": [[T0 + n, "cart", "i" * 20, "woke", "3", ""] for n in range(LOG_MAX)]
    }
    found = js.trace("p_x", state, lambda _j, _v: {})
    assert found.trimmed and len(found.lines) == LOG_MAX
    assert f"(the newest {LOG_MAX} are kept)" in render_trace(found)[0]
    assert render_trace(js.trace("p_x", None, lambda _j, _v: {})) == ["profile p_x: in no journey"]


def test_several_processes_states_sum(tmp_path: Path) -> None:
    """A state dir of a run on several processes: each process's profiles, summed."""
    settings = make()
    for n in (0, 1):
        store = open_store(tmp_path / f"process-{n}")
        engine, feed = Engine(settings, store), Feed(settings)
        engine.process(0, [feed("web", ev(f"e{n}", "add", T0, f"d{n}"))], T0)
        store.close()
    union = open_state(tmp_path)
    try:
        cart = status_of(union, settings)["cart"]
    finally:
        union.close()
    assert cart.totals == {"entered": 2, "sent": 2} and cart.in_flight == 2
