"""Invariants of the aggregate and absent state (operators.aggregates).

Each property compares the incremental state with a brute-force evaluation over the full event
list, written here from DESIGN §5 and independent of the implementation: arrival order,
merging, pruning and the next-change time must never change an answer.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.absent import (
    absent_add,
    absent_add_known,
    absent_changes_at,
    absent_init,
    absent_merge,
    absent_next_change,
    absent_prune,
    absent_value,
)
from operators.aggregates import (
    agg_add,
    agg_changes_at,
    agg_init,
    agg_merge,
    agg_next_change,
    agg_prune,
    agg_reader,
    agg_value,
)
from operators.rules import Absent, Aggregate, compile_rules

FUNCS = ("exists", "count", "sum", "min", "max", "last")
Event = tuple[int, Any]  # (ts, value of event.v)


@functools.cache
def aggregate(func: str, within: int | None) -> Aggregate:
    window = f', within="{within}ms"' if within else ""
    call = (
        f"{func}(true{window})" if func in ("exists", "count") else f"{func}(event.v, true{window})"
    )
    rule = compile_rules([("s", call if func == "exists" else f"{call} == {call}")])[0]
    return rule.aggregates[0]


@functools.cache
def absent_call(within: int) -> Absent:
    text = f'absent(event.b == true, after=event.a == true, within="{within}ms")'
    return compile_rules([("s", text)])[0].absents[0]


# ------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.integers(-50, 50),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 0.2, 0.3, 1e-9, -0.0, 2**53 + 0.0]),
    st.sampled_from(["a", "b", "", "é"]),
    st.booleans(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
times = st.integers(0, 100)
events_st = st.lists(st.tuples(times, values), max_size=25)
nows = st.integers(-10, 160)
windows = st.one_of(st.none(), st.integers(1, 40))
funcs = st.sampled_from(FUNCS)


# ------------------------------------------------------------------------ brute force


def flat(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return [x for item in value for x in flat(item)]
    return [value]


def is_number(x: Any) -> bool:
    return type(x) is int or (type(x) is float and math.isfinite(x))


def json_order(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def brute(func: str, within: int | None, events: Sequence[Event], now: int) -> Any:
    chosen = [(ts, v) for ts, v in events if within is None or now - within < ts <= now]
    if func == "exists":
        return bool(chosen)
    if func == "count":
        return len(chosen)
    pairs = [(ts, x) for ts, v in chosen for x in flat(v)]
    numbers = [x for _, x in pairs if is_number(x)]
    if func == "sum":
        if any(type(x) is float for x in numbers):
            return float(sum((Fraction(x) for x in numbers), Fraction(0)))
        return sum(numbers)
    # Among equal numbers an int is chosen over a float (0 over 0.0), whatever their order.
    if func == "min":
        return min(numbers, key=lambda x: (x, type(x) is float)) if numbers else None
    if func == "max":
        return max(numbers, key=lambda x: (x, type(x) is not float)) if numbers else None
    if not pairs:
        return None
    return max(pairs, key=lambda p: (p[0], json_order(p[1])))[1]


def same(a: Any, b: Any) -> bool:
    """Equal values, numbers also of the same kind (an int sum stays an int)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, float) and isinstance(b, float) and a == b
    return bool(a == b)


def event(v: Any) -> dict[str, Any]:
    return {"eventType": "x", "timestamp": 0, "v": v}


def fold(agg: Aggregate, events: Sequence[Event], state: Any = None) -> Any:
    state = agg_init(agg) if state is None else state
    for ts, v in events:
        e = event(v)
        assert agg.matches(e)
        state = agg_add(state, agg, ts, e)
    return state


def roundtrip(state: Any) -> Any:
    return orjson.loads(orjson.dumps(state))


# ----------------------------------------------------------------------- aggregates


@given(funcs, windows, events_st, st.data())
def test_value_is_order_independent_and_matches_brute_force(
    func: str, within: int | None, events: list[Event], data: st.DataObject
) -> None:
    agg = aggregate(func, within)
    shuffled = data.draw(st.permutations(events))
    before = json_order(events)
    state = fold(agg, shuffled)
    assert json_order(events) == before
    stored = roundtrip(state)
    for now in [*data.draw(st.lists(nows, min_size=1, max_size=4)), 0, 100]:
        expected = brute(func, within, events, now)
        assert same(agg_value(state, agg, now), expected), (now, state)
        assert same(agg_value(stored, agg, now), expected)


@given(funcs, windows, events_st, st.data())
def test_merge_of_parts_equals_adding_all(
    func: str, within: int | None, events: list[Event], data: st.DataObject
) -> None:
    agg = aggregate(func, within)
    cut1 = data.draw(st.integers(0, len(events)))
    cut2 = data.draw(st.integers(cut1, len(events)))
    a = fold(agg, events[:cut1])
    b = fold(agg, events[cut1:cut2])
    c = fold(agg, events[cut2:])
    a_json, b_json = json_order(a), json_order(b)
    now = data.draw(nows)
    expected = brute(func, within, events, now)
    candidates = [
        agg_merge(agg_merge(a, b, agg), c, agg),
        agg_merge(a, agg_merge(b, c, agg), agg),
        agg_merge(c, agg_merge(b, a, agg), agg),
        agg_merge(roundtrip(agg_merge(b, c, agg)), roundtrip(a), agg),
    ]
    for merged in candidates:
        assert same(agg_value(merged, agg, now), expected)
    assert (json_order(a), json_order(b)) == (a_json, b_json)  # arguments untouched
    empty = agg_init(agg)
    assert same(agg_value(agg_merge(a, empty, agg), agg, now), agg_value(a, agg, now))


@given(funcs, windows, events_st, events_st, nows, st.integers(0, 100), st.data())
def test_prune_never_changes_a_later_value(
    func: str,
    within: int | None,
    before: list[Event],
    after: list[Event],
    now: int,
    later: int,
    data: st.DataObject,
) -> None:
    agg = aggregate(func, within)
    state = fold(agg, before)
    pruned = agg_prune(state, agg, now)
    assert agg_prune(pruned, agg, now) == pruned
    if within is None:
        assert pruned == state
    else:
        assert len(pruned) <= len(state)
        assert all(entry[0] > now - within for entry in pruned)
    # events of any time may still arrive; values at now or later are unaffected
    complete = fold(agg, after, state)
    partial = fold(agg, after, pruned)
    for t in (now, now + later, now + data.draw(st.integers(0, 60))):
        expected = brute(func, within, [*before, *after], t)
        assert same(agg_value(partial, agg, t), expected)
        assert same(agg_value(complete, agg, t), expected)


@given(funcs, windows, events_st, nows)
def test_next_change_is_exact(func: str, within: int | None, events: list[Event], now: int) -> None:
    agg = aggregate(func, within)
    state = fold(agg, events)
    current = agg_value(state, agg, now)
    nxt = agg_next_change(state, agg, now)
    horizon = 100 + (within or 0) + 2
    if nxt is None:
        for t in range(now + 1, max(now, horizon) + 1):
            assert same(agg_value(state, agg, t), current), t
        return
    assert nxt > now
    for t in range(now + 1, nxt):
        assert same(agg_value(state, agg, t), current), t
    assert within is not None
    # the time is the first real boundary: an entry leaves the window or one enters it
    kept = [(ts, v) for ts, v in events if contributes(func, v)]
    leaving = {ts + within for ts, _ in kept if now - within < ts <= now}
    entering = {ts for ts, _ in kept if ts > now}
    assert nxt == min(leaving | entering)


@pytest.mark.parametrize("func", ["min", "max"])
@pytest.mark.parametrize("within", [None, 10])
@pytest.mark.parametrize("events", [[(0, 0), (0, 0.0)], [(0, 0.0), (0, 0)], [(0, [0.0, 0])]])
def test_equal_int_and_float_give_the_int_in_any_order(
    func: str, within: int | None, events: list[Event]
) -> None:
    """Found by hypothesis: min over 0 and 0.0 gave whichever came first."""
    agg = aggregate(func, within)
    state = roundtrip(fold(agg, events))
    for value in (agg_value(state, agg, 5), agg_reader(agg)(state, 5)):
        assert same(value, 0)
    assert same(agg_value(agg_merge(fold(agg, events[:1]), fold(agg, events[1:]), agg), agg, 5), 0)


@given(funcs, windows, events_st, st.data())
def test_reader_is_agg_value(
    func: str, within: int | None, events: list[Event], data: st.DataObject
) -> None:
    agg = aggregate(func, within)
    read = agg_reader(agg)
    state = roundtrip(fold(agg, data.draw(st.permutations(events))))
    for now in [*data.draw(st.lists(nows, min_size=1, max_size=6)), 0, 100]:
        expected = brute(func, within, events, now)
        assert same(read(state, now), expected), (now, state)
        assert same(read(state, now), agg_value(state, agg, now))
    assert same(read(agg_init(agg), 0), agg_value(agg_init(agg), agg, 0))


@given(funcs, windows, events_st)
def test_changes_at_names_every_time_the_value_moves(
    func: str, within: int | None, events: list[Event]
) -> None:
    agg = aggregate(func, within)
    state = fold(agg, events)
    for t in range(-5, 100 + (within or 0) + 3):
        if not agg_changes_at(state, agg, t):
            assert same(agg_value(state, agg, t), agg_value(state, agg, t - 1)), t
    if within is None:
        assert not any(agg_changes_at(state, agg, t) for t in range(0, 101))


def contributes(func: str, v: Any) -> bool:
    """Whether an event brings anything to the aggregate (a value where one is needed)."""
    if func in ("exists", "count"):
        return True
    if func == "last":
        return bool(flat(v))
    return any(is_number(x) for x in flat(v))


# --------------------------------------------------------------------------- absent

AbsentEvent = tuple[int, bool, bool]  # (ts, is A, is B)

absent_events = st.lists(
    st.tuples(times, st.booleans(), st.booleans()).filter(lambda e: e[1] or e[2]), max_size=25
)
absent_windows = st.integers(1, 40)


def brute_absent(within: int, events: Sequence[AbsentEvent], now: int) -> bool:
    a_times = [ts for ts, is_a, _ in events if is_a and ts <= now]
    if not a_times:
        return False
    t_a = max(a_times)
    if now - t_a < within:
        return False
    return not any(t_a < ts <= t_a + within for ts, _, is_b in events if is_b)


def fold_absent(a: Absent, events: Sequence[AbsentEvent], state: Any = None) -> Any:
    state = absent_init(a) if state is None else state
    for ts, is_a, is_b in events:
        e = {"a": is_a, "b": is_b}
        assert a.after(e) is is_a
        assert a.missing(e) is is_b
        state = absent_add(state, a, ts, e)
    return state


@given(absent_windows, absent_events, st.data())
def test_absent_is_order_independent_and_matches_brute_force(
    within: int, events: list[AbsentEvent], data: st.DataObject
) -> None:
    a = absent_call(within)
    state = fold_absent(a, data.draw(st.permutations(events)))
    stored = roundtrip(state)
    for now in [*data.draw(st.lists(nows, min_size=1, max_size=4)), 100, 150]:
        expected = brute_absent(within, events, now)
        assert absent_value(state, a, now) is expected, (now, state)
        assert absent_value(stored, a, now) is expected


@given(absent_windows, absent_events, st.data())
def test_absent_merge_of_parts_equals_adding_all(
    within: int, events: list[AbsentEvent], data: st.DataObject
) -> None:
    a = absent_call(within)
    cut1 = data.draw(st.integers(0, len(events)))
    cut2 = data.draw(st.integers(cut1, len(events)))
    x = fold_absent(a, events[:cut1])
    y = fold_absent(a, events[cut1:cut2])
    z = fold_absent(a, events[cut2:])
    left = absent_merge(absent_merge(x, y, a), z, a)
    right = absent_merge(x, absent_merge(z, y, a), a)
    assert left == right == fold_absent(a, events)
    assert absent_merge(x, y, a) == absent_merge(y, x, a)
    now = data.draw(nows)
    assert absent_value(left, a, now) is brute_absent(within, events, now)


@given(absent_windows, absent_events, absent_events, nows, st.lists(st.integers(0, 60)))
def test_absent_prune_never_changes_a_later_value(
    within: int,
    before: list[AbsentEvent],
    after: list[AbsentEvent],
    now: int,
    steps: list[int],
) -> None:
    a = absent_call(within)
    pruned = absent_prune(fold_absent(a, before), a, now)
    assert absent_prune(pruned, a, now) == pruned
    # absent_prune's contract: events arriving later are newer than now - within
    late = [e for e in after if e[0] > now - within]
    state = fold_absent(a, late, pruned)
    t = now
    for step in [0, *steps]:
        t += step
        assert absent_value(state, a, t) is brute_absent(within, [*before, *late], t), t
        state = absent_prune(state, a, t)  # pruning again as time goes on
        assert absent_value(state, a, t) is brute_absent(within, [*before, *late], t), t


@given(absent_windows, absent_events, nows)
def test_absent_prune_keeps_the_state_small(
    within: int, events: list[AbsentEvent], now: int
) -> None:
    a = absent_call(within)
    a_times, _ = absent_prune(fold_absent(a, events), a, now)
    # Only the latest `after` event at or before now is kept; the `missing` times after it
    # must all stay (a late or merged-in `after` can need them) and are bounded by
    # tests/property/test_absent_prune_safe.py::test_pruned_state_stays_small.
    assert len([t for t in a_times if t <= now]) <= 1


@given(absent_windows, absent_events, nows)
def test_absent_next_change_is_exact(within: int, events: list[AbsentEvent], now: int) -> None:
    a = absent_call(within)
    state = fold_absent(a, events)
    current = absent_value(state, a, now)
    nxt = absent_next_change(state, a, now)
    if nxt is None:
        for t in range(now + 1, max(now, 100 + within + 2) + 1):
            assert absent_value(state, a, t) is current, t
        return
    assert nxt > now
    for t in range(now + 1, nxt):
        assert absent_value(state, a, t) is current, t
    # a real boundary: the latest A turns `within` old, or a later A becomes the latest
    a_times = sorted(ts for ts, is_a, _ in events if is_a)
    latest = max((ts for ts in a_times if ts <= now), default=None)
    boundaries = {ts for ts in a_times if ts > now}
    if latest is not None and latest + within > now:
        boundaries.add(latest + within)
    assert nxt == min(boundaries)


@given(absent_windows, absent_events)
def test_absent_changes_at_names_every_time_the_value_moves(
    within: int, events: list[AbsentEvent]
) -> None:
    a = absent_call(within)
    state = fold_absent(a, events)
    for t in range(-5, 100 + within + 3):
        if not absent_changes_at(state, a, t):
            assert absent_value(state, a, t) is absent_value(state, a, t - 1), t


@given(absent_windows, absent_events, times, st.booleans(), st.booleans())
def test_absent_add_known_is_absent_add(
    within: int, events: list[AbsentEvent], ts: int, is_a: bool, is_b: bool
) -> None:
    a = absent_call(within)
    state = fold_absent(a, events)
    before = json_order(state)
    added = absent_add_known(state, ts, is_a, is_b)
    assert added == absent_add(state, a, ts, {"a": is_a, "b": is_b})
    assert json_order(state) == before  # arguments untouched
    if not (is_a or is_b):
        assert added is state
