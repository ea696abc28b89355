"""Time in live mode (issue #12): event time is the wall clock less the allowed lateness,
whether records flow or not; an event is evaluated at a now that includes it; no record's
clock moves everyone's time; the wall-clock tick is not pushed back by traffic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, parse_settings
from flows.apply import _ApplyRecords
from flows.options import RunOptions
from flows.runtime import close_engines
from operators.engine import Engine
from operators.store import MemoryStore
from schemas.records import AudienceChange, Record
from tests.unit.steps.helpers import Feed as StepFeed
from tests.unit.steps.helpers import ev

CONFIG = """\
namespaces: [{name: ECID}]
sources:
  - {name: web, kind: event, path: w.jsonl}
segments:
  - id: abandoned
    rule: 'absent(event.eventType == "buy", after=event.eventType == "cart", within="20s")'
  - id: all-recent
    rule: 'count(event.eventType == "view") == count(event.eventType == "view", within="1d")'
  - id: viewed
    rule: 'exists(event.eventType == "view", within="1h")'
"""
WALL = 1_764_590_400_000  # 2025-12-01T12:00:00Z
S = 1000


@pytest.fixture
def settings() -> Settings:
    return parse_settings(CONFIG, Path("/c.yaml"), {}, {})


class Feed:
    """Events of the web source, numbered e1, e2, … in the order they are made."""

    def __init__(self, settings: Settings) -> None:
        self.decoded = StepFeed(settings)
        self.n = 0

    def __call__(self, kind: str, ts: int, device: str) -> Record:
        self.n += 1
        return self.decoded("web", ev(f"e{self.n}", kind, ts, device))


def seen(out: list[Any]) -> list[tuple[str, str, str, int]]:
    return [
        (c.segment_id, c.status, c.reason.split(":")[0], c.event_time_ms)
        for c in out
        if isinstance(c, AudienceChange) and c.segment_id != "all-recent"
    ]


def test_an_event_ahead_of_the_wall_clock_is_evaluated_at_its_own_time(
    settings: Settings,
) -> None:
    """A client clock half a second fast: the event's change comes at once, with its reason,
    and a rule comparing a windowed and an unwindowed count does not flap."""
    engine, feed = Engine(settings, MemoryStore(), live=True), Feed(settings)
    out = engine.process(0, [feed("view", WALL + 500, "d1")], WALL)
    changes = [(c.segment_id, c.status, c.reason) for c in out if isinstance(c, AudienceChange)]
    assert ("viewed", "entered", "event:e1") in changes
    assert not [c for c in changes if c[0] == "all-recent" and c[1] == "exited"]
    # Later ticks change nothing: no `entered` by timer a second later.
    assert engine.advance(0, WALL + 2 * S, WALL + 2 * S) == []


def test_the_same_event_in_a_replay_waits_for_event_time(settings: Settings) -> None:
    """Replays keep pure event time: one partition's event time is its latest record."""
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("view", WALL + 500, "d1")], WALL)
    assert ("viewed", "entered", "event", WALL + 500) in seen(out)
    assert engine.max_event_ms == WALL + 500


def test_no_record_moves_live_event_time(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore(), live=True), Feed(settings)
    engine.process(0, [feed("view", WALL + 9 * 60 * S, "d1")], WALL)
    assert engine.max_event_ms == WALL  # the wall clock, not the record nine minutes ahead


def test_timers_fire_before_each_batch_under_steady_traffic(settings: Settings) -> None:
    """Traffic stamped 15 s in the past never holds the abandoned-cart timer back: each
    batch first brings event time to the wall clock and fires what is due."""
    engine, feed = Engine(settings, MemoryStore(), live=True), Feed(settings)
    out = engine.process(0, [feed("cart", WALL - 15 * S, "shopper")], WALL)
    assert not [c for c in seen(out) if c[0] == "abandoned"]
    assert engine.next_timer_ms() == WALL + 5 * S  # 20 s after the cart
    fired: list[tuple[str, str, str, int]] = []
    for step in range(1, 12):  # a batch every second from other people, stamped 15 s back
        wall = WALL + step * S
        batch = [feed("view", wall - 15 * S, f"other-{step}-{i}") for i in range(5)]
        fired += [c for c in seen(engine.process(0, batch, wall)) if c[0] == "abandoned"]
        if fired:
            break
    assert fired == [("abandoned", "entered", "timer", WALL + 5 * S)]
    assert step == 5  # the first batch at or after the due time


def test_allowed_lateness_holds_live_time_back(settings: Settings) -> None:
    late = settings.model_copy(
        update={"time": settings.time.model_copy(update={"allowed_lateness": "10s"})}
    )
    engine, feed = Engine(late, MemoryStore(), live=True), Feed(late)
    engine.process(0, [feed("cart", WALL, "shopper")], WALL)
    assert not seen(engine.advance(0, WALL + 25 * S, WALL + 25 * S))  # now = wall - 10 s
    out = engine.advance(0, WALL + 30 * S, WALL + 30 * S)
    assert [c for c in seen(out) if c[0] == "abandoned"] == [
        ("abandoned", "entered", "timer", WALL + 20 * S)
    ]


def _options(tmp_path: Path, clock: list[int]) -> RunOptions:
    return RunOptions(
        mode="live", state_dir=tmp_path / "state", clock=lambda: clock[0], idle_advance_s=1.0
    )


def test_the_live_tick_is_not_pushed_back_by_batches(tmp_path: Path, settings: Settings) -> None:
    """Bytewax asks `notify_at` after every batch; the answer stays until it has come."""
    clock = [int(datetime.now(tz=UTC).timestamp() * 1000)]
    feed = Feed(settings)
    logic = _ApplyRecords(settings, _options(tmp_path, clock), lambda _r: "0000", None)
    try:
        logic.on_batch([feed("view", clock[0] - 15 * S, "d0")])
        first = logic.notify_at()
        assert first is not None
        for i in range(5):
            logic.on_batch([feed("view", clock[0] - 15 * S, f"d{i + 1}")])
            assert logic.notify_at() == first
        logic.on_notify()
        later = logic.notify_at()
        assert later is not None and later > first
    finally:
        close_engines()


def test_the_live_tick_comes_when_the_next_timer_is_due(tmp_path: Path, settings: Settings) -> None:
    clock = [int(datetime.now(tz=UTC).timestamp() * 1000)]
    feed = Feed(settings)
    logic = _ApplyRecords(settings, _options(tmp_path, clock), lambda _r: "0000", None)
    try:
        # A cart 19.7 s old: its timer is due in 0.3 s, before the one-second tick.
        logic.on_batch([feed("cart", clock[0] - 19_700, "shopper")])
        at = logic.notify_at()
        assert at is not None
        due = datetime.fromtimestamp((clock[0] + 300) / 1000, tz=UTC)
        assert abs((at - due).total_seconds()) < 0.01
    finally:
        close_engines()
