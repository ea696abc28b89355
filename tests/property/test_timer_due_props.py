"""A timer that evaluates only `segments.due_at` (the segments whose windowed inputs change at
the timer's time) emits exactly the transitions of one that evaluates every windowed segment;
and a timer set by `segments.next_flip` (only where a segment's value changes) emits exactly
the transitions, at the same times, of one set at every change of a windowed input.

The loop below drives the pure functions the way the engine does: event time is the latest
event less the lateness, due timers fire first (each evaluated at its own time), an event is
applied and its affected segments evaluated, and whenever a windowed input changed the profile
is pruned and its timer rescheduled (`next_change`, or `next_flip`). The runs differ only in
the `which` of a timer, or in when it is set.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators import profile as prof
from operators.rules import compile_rules
from operators.segments import SegmentIndex, due_at, evaluate, next_flip, transitions
from schemas.records import Record
from tests.property.streams import attribute, events, record

INDEX = SegmentIndex(
    compile_rules(
        [
            ("buyers-5", 'exists(event.eventType == "buy", within="5ms")'),
            ("viewers", 'count(event.eventType == "view", within="8ms") >= 2'),
            ("spend", 'sum(event.amount, event.eventType == "buy", within="12ms") > 20'),
            ("pricey", 'max(event.amount, event.eventType == "view", within="6ms") > 15'),
            ("last-b", 'last(event.page, event.eventType == "view", within="9ms") == "b"'),
            (
                "cart",
                'absent(event.eventType == "buy", after=event.eventType == "add", within="4ms")',
            ),
            (
                "idle",
                'absent(event.eventType == "view", after=event.eventType == "add", within="7ms")',
            ),
            ("buyers", 'exists(event.eventType == "buy")'),
            ("gold", 'profile.level == "gold"'),
            ("combo", 'in_segment("cart") and not in_segment("viewers")'),
            ("gold-cart", 'in_segment("gold") and in_segment("combo")'),
            ("quiet", 'not in_segment("buyers-5") and not in_segment("idle")'),
            # Windows no other segment reads, next to an attribute or an input that time does
            # not move: when these flip depends on more than their windows.
            (
                "gold-viewers",
                'profile.level == "gold" and count(event.eventType == "view", within="10ms") >= 2',
            ),
            (
                "busy",
                'count(event.eventType == "other") >= 2 and exists(event.eventType == "buy", within="6ms")',
            ),
        ]
    )
)
TRUE_WHEN_EMPTY = frozenset(
    s for s, v in evaluate(prof.new_profile(), INDEX, INDEX.all_ids(), 0).items() if v
)

event = events("view", "buy", "add", "other")
items = st.lists(st.one_of(event, attribute, event), min_size=1, max_size=20)
# Views and buys among tier changes: flips that an attribute or another input makes possible.
mixed = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["view", "other", "buy"]), st.integers(0, 30), st.just(0), st.just("a")
        ),
        attribute,
    ),
    min_size=1,
    max_size=12,
)


Emitted = tuple[str, bool, int, int]  # segment, entered, sequence, at


class Run:
    def __init__(self, due_only: bool, lookahead: int = 0) -> None:
        self.due_only = due_only
        self.lookahead = lookahead  # 0: a timer at every input change; else `next_flip`
        self.profile: prof.Profile = prof.new_profile()
        self.out: list[Emitted] = []
        self.timers_fired = 0

    def evaluate(self, which: set[str], now: int, at: int, retime: bool) -> None:
        profile = self.profile
        if which:
            results = evaluate(profile, INDEX, which, now)
            retime = retime or not INDEX.timed.isdisjoint(results)
            segs, changes = transitions(profile["segs"], results, at)
            profile = {**profile, "segs": segs}
            self.out.extend((c.segment_id, c.entered, c.sequence, at) for c in changes)
        if retime:
            profile = prof.prune(profile, INDEX.aggregates, INDEX.absents, now)
            if self.lookahead:
                timer = next_flip(profile, INDEX, now, self.lookahead)
            else:
                timer = prof.next_change(profile, INDEX.aggregates, INDEX.absents, now)
            profile = {**profile, "timer": timer}
        self.profile = profile

    def fire(self, upto: int) -> None:
        while self.profile["timer"] is not None and self.profile["timer"] <= upto:
            ts = self.profile["timer"]
            self.profile = {**self.profile, "timer": None}
            self.timers_fired += 1
            which = due_at(self.profile, INDEX, ts) if self.due_only else set(INDEX.timed)
            self.evaluate(which, ts, ts, retime=True)

    def apply(self, r: Record, now: int, fresh: bool) -> None:
        which = set(TRUE_WHEN_EMPTY) if fresh else set()
        retime = fresh
        if r.kind == "event":
            aggs, absents = INDEX.candidates(r.event_type or "")
            self.profile, changed = prof.apply_event(self.profile, r, aggs, absents)
            which |= INDEX.affected_by_inputs(changed)
            retime = retime or not changed.isdisjoint(INDEX.windowed)
        else:
            self.profile, paths = prof.apply_attributes(self.profile, r)
            which |= INDEX.affected_by_attributes(paths)
        # The engine sets the timer again only when a segment reading a window was evaluated
        # (`evaluate` above); the reference runs also whenever a windowed input changed.
        self.evaluate(which, now, r.ts_ms or 0, retime and not self.lookahead)


def drive(records: list[Record], lateness: int, due_only: bool, lookahead: int = 0) -> Run:
    run = Run(due_only, lookahead)
    watermark: int | None = None
    for i, r in enumerate(records):
        if r.kind == "event" and r.ts_ms is not None:
            watermark = r.ts_ms if watermark is None else max(watermark, r.ts_ms)
        now = 0 if watermark is None else watermark - lateness
        run.fire(now)
        run.apply(r, now, fresh=i == 0)
    run.fire(10**6)  # the end of a replay: every timer fires
    return run


@settings(max_examples=300)
@given(items, st.integers(0, 6))
def test_due_timers_emit_what_evaluating_every_timed_segment_emits(
    raw: list[tuple[Any, ...]], lateness: int
) -> None:
    records = [record(i, item) for i, item in enumerate(raw)]
    every = drive(records, lateness, due_only=False)
    due = drive(records, lateness, due_only=True)
    assert due.out == every.out
    assert due.profile == every.profile
    assert due.timers_fired == every.timers_fired


@settings(max_examples=1200)
@given(st.one_of(items, mixed), st.integers(0, 2), st.sampled_from([1, 2, 3, 8]))
def test_timers_set_where_a_segment_flips_emit_what_timers_at_every_change_emit(
    raw: list[tuple[Any, ...]], lateness: int, lookahead: int
) -> None:
    records = [record(i, item) for i, item in enumerate(raw)]
    every = drive(records, lateness, due_only=True)
    flips = drive(records, lateness, due_only=True, lookahead=lookahead)
    assert flips.out == every.out
    assert flips.profile["segs"] == every.profile["segs"]
    assert flips.timers_fired <= every.timers_fired


def test_next_flip_skips_changes_that_flip_nothing() -> None:
    run = Run(due_only=True, lookahead=8)
    for i, ts in enumerate((10, 11, 12)):  # three views: `viewers` (>= 2 in 8ms) holds
        run.apply(record(i, ("view", ts, 0, "a")), ts, fresh=i == 0)
    assert run.profile["segs"]["viewers"][0]
    # Views leave `pricey`'s 6ms window at 16, 17, 18 and `viewers`' 8ms window at 18, 19, 20;
    # `pricey` and `last-b` hold false throughout, and `viewers` first flips at 19.
    assert prof.next_change(run.profile, INDEX.aggregates, INDEX.absents, 12) == 16
    assert run.profile["timer"] == 19
    # Looking one change point ahead, the timer stops at 16 and looks further from there.
    assert next_flip(run.profile, INDEX, 12, lookahead=1) == 16
    assert next_flip(run.profile, INDEX, 12, lookahead=3) == 18
    run.fire(100)
    assert run.timers_fired == 1
    assert run.out[-1] == ("viewers", False, 2, 19)


def test_a_flip_that_an_attribute_makes_possible_is_timed() -> None:
    """Two views 9 ms apart: `gold-viewers` (gold and two views in 10 ms) cannot flip as the
    first leaves at 11, so no timer is set there; the profile turns gold at 10 and enters.
    Evaluating it must set the timer again: it exits at 11, as with a timer at every change."""
    items = [("view", 1, 0, "a"), ("view", 10, 0, "a"), ("gold", 10, 0)]
    records = [record(i, item) for i, item in enumerate(items)]
    for lookahead in (0, 8):
        run = drive(records, 0, due_only=True, lookahead=lookahead)
        ours = [o for o in run.out if o[0] == "gold-viewers"]
        assert ours == [("gold-viewers", True, 1, 10), ("gold-viewers", False, 2, 11)]


def test_due_at_names_only_segments_whose_inputs_change() -> None:
    r = record(0, ("add", 10, 0, "a"))
    aggs, absents = INDEX.candidates("add")
    profile, _ = prof.apply_event(prof.new_profile(), r, aggs, absents)
    # the add becomes the latest A at 10, and 4ms / 7ms old at 14 / 17
    assert due_at(profile, INDEX, 10) == {"cart", "idle"}
    assert due_at(profile, INDEX, 14) == {"cart"}
    assert due_at(profile, INDEX, 17) == {"idle"}
    assert due_at(profile, INDEX, 12) == set()
