"""History trimming never changes a rule whose window is inside the retention (issue #14,
DESIGN §13). For random event streams of two profiles and a random retention (`max_events`,
`max_age`), a windowed rule with `within <= max_age` and at most `max_events` events of the
profile in its window has the same inputs and the same answer whether they are rebuilt from
`History.view` (how an added or edited audience is rolled out) or built incrementally from
every event, pruned as the engine prunes (the fast path). And the view does not depend on when
the amortised trims happened: any arrival order and any commit points give the same view, which
is the newest `max_events` events in (now - max_age, now] of everything ever added."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import HistorySettings
from operators import profile as prof
from operators.aggregates import agg_init, agg_value
from operators.rules import Aggregate, compile_rules
from operators.segments import SegmentIndex, evaluate
from operators.steps.history import History, View
from operators.store import MemoryStore, Txn
from schemas.records import Identity, Record
from tests.property.streams import record

# Two profiles in one shard whose keys could collide if the history's prefix were careless.
WHO: tuple[Identity, Identity] = (("ECID", "d"), ("ECID", "d/0000000000001/e1"))

TEMPLATES = {
    "views": 'count(event.eventType == "view", within="{w}ms") >= 2',
    "spend": 'sum(event.amount, event.eventType == "buy", within="{w}ms") > 20',
    "cheap": 'min(event.amount, true, within="{w}ms") < 5',
    "big": 'max(event.amount, event.eventType == "buy", within="{w}ms") > 25',
    "seen-b": 'exists(event.page == "b", within="{w}ms")',
    "last-a": 'last(event.page, true, within="{w}ms") == "a"',
}


@functools.cache
def index_for(window: int) -> SegmentIndex:
    return SegmentIndex(compile_rules([(s, t.format(w=window)) for s, t in TEMPLATES.items()]))


Item = tuple[tuple[str, int, int, str], int]  # an event, and which profile it belongs to

event = st.tuples(
    st.sampled_from(["view", "buy", "look"]),
    st.integers(0, 120),  # ts
    st.integers(0, 30),  # amount
    st.sampled_from(["a", "b"]),
)
streams = st.lists(st.tuples(event, st.integers(0, 1)), min_size=1, max_size=40)
retention = st.tuples(st.integers(1, 8), st.integers(5, 80))  # max_events, max_age (ms)


def history(max_events: int, max_age: int) -> tuple[History, MemoryStore]:
    store = MemoryStore()
    held = HistorySettings(max_age=f"{max_age}ms", max_events=max_events)
    return History(held, 1, store), store


def feed(
    hist: History, store: MemoryStore, records: list[tuple[Record, int]], cuts: set[int]
) -> tuple[dict[int, prof.Profile], int]:
    """Add each event at the stream's event time (the latest time seen), committing after the
    positions in `cuts`; returns each profile's document (its `hist` and `events`) and now."""
    profiles = {0: prof.new_profile(), 1: prof.new_profile()}
    now = -1
    txn = Txn(store)
    for i, (rec, who) in enumerate(records):
        ts = rec.ts_ms
        assert ts is not None
        now = max(now, ts)
        p, _ = prof.apply_event_body(profiles[who], ts, rec.body, (), ())
        profiles[who] = hist.add(txn, WHO[who], p, rec, now)
        if i in cuts:
            txn.commit()
            txn = Txn(store)
    txn.commit()
    return profiles, now


def fast_path(
    index: SegmentIndex, records: list[tuple[Record, int]], who: int
) -> tuple[prof.Profile, int]:
    """The inputs as the engine builds them: every event applied on arrival, windows pruned at
    the stream's event time."""
    profile, now = prof.new_profile(), -1
    for rec, owner in records:
        assert rec.ts_ms is not None
        now = max(now, rec.ts_ms)
        if owner != who:
            continue
        aggs, absents = index.candidates(rec.event_type or "")
        profile, _ = prof.apply_event(profile, rec, aggs, absents)
        profile = prof.prune(profile, index.aggregates, index.absents, now)
    return profile, now


def value(profile: prof.Profile, agg: Aggregate, at: int) -> Any:
    state = profile["aggs"].get(agg.key)
    return agg_value(agg_init(agg) if state is None else state, agg, at)


def newest(events: list[tuple[int, str]], now: int, max_events: int, max_age: int) -> list[Any]:
    inside = sorted(e for e in events if e[0] > now - max_age)
    return inside[max(0, len(inside) - max_events) :]


@settings(max_examples=400, deadline=None)
@given(streams, retention, st.integers(1, 80), st.sets(st.integers(0, 40)))
def test_trimming_never_changes_a_rule_inside_the_retention(
    raw: list[Item], kept: tuple[int, int], window_seed: int, cuts: set[int]
) -> None:
    max_events, max_age = kept
    window = 1 + window_seed % max_age  # within <= max_age
    index = index_for(window)
    records = [(record(i, item), who) for i, (item, who) in enumerate(raw)]
    hist, store = history(max_events, max_age)
    documents, now = feed(hist, store, records, cuts)
    for who in (0, 1):
        if documents[who]["events"] is None:
            continue
        view = hist.view(store, WHO[who], documents[who], now)
        in_window = sum(1 for rec, o in records if o == who and now - window < (rec.ts_ms or 0))
        if in_window > max_events:
            continue  # the window holds more than is kept: not a rule inside the retention
        aggs = list(index.aggregates.values())
        rebuilt = prof.rebuild_inputs(documents[who], view.events, aggs, [])
        fast, _ = fast_path(index, records, who)
        for at in (now, now + window // 2, now + window):
            for agg in aggs:
                assert value(rebuilt, agg, at) == value(fast, agg, at), (agg.key, at)
            assert evaluate(rebuilt, index, index.all_ids(), at) == evaluate(
                fast, index, index.all_ids(), at
            )


@settings(max_examples=300, deadline=None)
@given(streams, retention, st.randoms(), st.sets(st.integers(0, 40)), st.sets(st.integers(0, 40)))
def test_the_view_does_not_depend_on_when_trims_happened(
    raw: list[Item], kept: tuple[int, int], rng: Any, cuts_a: set[int], cuts_b: set[int]
) -> None:
    """The same events in their order and in a shuffled one (so other trims, at other event
    times), committed at other points: one view, the definition's, at the same final time."""
    max_events, max_age = kept
    records = [(record(i, item), who) for i, (item, who) in enumerate(raw)]
    bodies = {r.event_id: r.body for r, _ in records}
    shuffled = list(records)
    rng.shuffle(shuffled)
    views: list[dict[int, View]] = []
    for order, cuts in ((records, cuts_a), (shuffled, cuts_b)):
        hist, store = history(max_events, max_age)
        documents, now = feed(hist, store, order, cuts)
        views.append(
            {
                who: hist.view(store, WHO[who], documents[who], now)
                for who in (0, 1)
                if documents[who]["events"] is not None
            }
        )
        for who, view in views[-1].items():
            everything = [(r.ts_ms or 0, r.event_id or "") for r, o in records if o == who]
            want = newest(everything, now, max_events, max_age)
            assert view.events == [(ts, bodies[eid]) for ts, eid in want]
            # Amortised: never more than the slack over what the view can show.
            assert len(store_keys(store, hist, WHO[who])) < max_events + max(1, max_events // 10)
    assert views[0] == views[1]


def store_keys(store: MemoryStore, hist: History, who: Identity) -> list[bytes]:
    return [k for k, _ in store.scan(hist.prefix(who))]


@settings(max_examples=300, deadline=None)
@given(streams, retention, st.sets(st.integers(0, 40)))
def test_the_view_is_complete_from_its_from_ms(
    raw: list[Item], kept: tuple[int, int], cuts: set[int]
) -> None:
    """`from_ms` None: the view holds every event the profile ever had; else every event at or
    after `from_ms` (what `cdp explain` and `segments sizes` report as "history from")."""
    max_events, max_age = kept
    records = [(record(i, item), who) for i, (item, who) in enumerate(raw)]
    hist, store = history(max_events, max_age)
    documents, now = feed(hist, store, records, cuts)
    for who in (0, 1):
        if documents[who]["events"] is None:
            continue
        view = hist.view(store, WHO[who], documents[who], now)
        shown = sorted((ts, orjson.dumps(body)) for ts, body in view.events)
        frm = view.from_ms
        due = sorted(
            (r.ts_ms or 0, orjson.dumps(r.body))
            for r, o in records
            if o == who and (frm is None or (r.ts_ms or 0) >= frm)
        )
        assert [e for e in shown if frm is None or e[0] >= frm] == due, frm
