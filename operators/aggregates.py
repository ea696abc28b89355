"""Per-profile state of the rule language's aggregate calls, as pure functions.

No I/O, no clock (``now_ms`` is an argument), arguments are never mutated. Every state is
plain JSON (lists, ints, floats, bools, None) so it can be stored with orjson; times are
integer epoch milliseconds.

States (``D`` = ``within_ms``):

* unwindowed (no ``within``), running values over all events whatever their time:
  ``exists`` bool, ``count`` int, ``sum`` ``[int_total, float_partials]``, ``min``/``max``
  number or None, ``last`` ``[ts, value]`` or None.
* windowed: entries sorted by time, one per distinct timestamp: ``[ts, n]`` (exists, count),
  ``[ts, int_total, float_partials]`` (sum), ``[ts, m]`` (min, max), ``[ts, value]`` (last).
  An entry counts at ``now`` when ``now - D < ts <= now``.
* absent: see `operators.absent`.

Sums are exact and independent of arrival order: integers add exactly and floats are kept as
Shewchuk partials (the non-overlapping floats ``math.fsum`` uses) whose exact total is rounded
once when the value is read.

``last`` is the value of the matching event with the greatest time; between values at the same
time, the greatest JSON encoding (``_order_key``) wins, so the result never depends on arrival
order.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Any

from operators.rules import Aggregate
from operators.sums import SPILL, fadd, sum_add, sum_merge, sum_result

__all__ = [
    "agg_add",
    "agg_changes_at",
    "agg_init",
    "agg_merge",
    "agg_next_change",
    "agg_prune",
    "agg_reader",
    "agg_value",
]


_ts: Callable[[list[Any]], int] = itemgetter(0)  # an entry's time (C-speed bisect key)


def _order_key(value: Any) -> str:
    """The tie-break order of ``last``: the JSON encoding, keys sorted, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _better(candidate: Any, current: Any) -> bool:
    return _order_key(candidate) > _order_key(current)


def _replaces(candidate: Any, current: Any, smallest: bool) -> bool:
    """Whether `candidate` is the new minimum (`smallest`) or maximum: strictly beyond
    `current`, or equal to it and an integer where `current` is a float. Equal numbers of both
    kinds (0 and 0.0) then give the same result in whatever order they arrive."""
    if candidate == current:
        return type(current) is float and type(candidate) is not float
    return bool(candidate < current) if smallest else bool(candidate > current)


def _extreme(values: Iterable[Any], smallest: bool) -> Any:
    """`min` or `max` of non-empty `values`, ties broken as `_replaces` does."""
    it = iter(values)
    best = next(it)
    for v in it:
        if _replaces(v, best, smallest):
            best = v
    return best


# ------------------------------------------------------------------- entry combinators


def _combine_entries(func: str, a: list[Any], b: list[Any]) -> list[Any]:
    """Two entries of the same timestamp as one."""
    ts = a[0]
    if func in ("exists", "count"):
        return [ts, a[1] + b[1]]
    if func == "sum":
        total, partials = sum_merge(a[1], a[2], b[1], b[2])
        return [ts, total, partials]
    if func in ("min", "max"):
        return [ts, b[1] if _replaces(b[1], a[1], func == "min") else a[1]]
    return [ts, b[1] if _better(b[1], a[1]) else a[1]]


def _entry(agg: Aggregate, ts_ms: int, event: Mapping[str, Any]) -> list[Any] | None:
    """The windowed entry one event makes, or None when it brings no value."""
    func = agg.func
    if func in {"exists", "count"}:
        return [ts_ms, 1]
    values = agg.values(event) if agg.values is not None else []
    if not values:
        return None
    if func == "sum":
        total, partials = sum_add(0, [], values)
        return [ts_ms, total, partials]
    if func in ("min", "max"):
        return [ts_ms, _extreme(values, func == "min")]
    return [ts_ms, values[0] if len(values) == 1 else max(values, key=_order_key)]


# ------------------------------------------------------------------------- aggregates


def agg_init(agg: Aggregate) -> Any:
    if agg.within_ms is not None:
        return []
    if agg.func == "exists":
        return False
    if agg.func == "count":
        return 0
    if agg.func == "sum":
        return [0, []]
    return None


def agg_add(state: Any, agg: Aggregate, ts_ms: int, event: Mapping[str, Any]) -> Any:
    """The state after one more matching event (the caller has checked ``agg.matches``)."""
    func = agg.func
    if func in {"exists", "count"}:
        if agg.within_ms is not None:
            return _insert(state, func, [ts_ms, 1])
        return True if func == "exists" else state + 1
    entry = _entry(agg, ts_ms, event)
    if entry is None:
        return state
    if agg.within_ms is not None:
        return _insert(state, agg.func, entry)
    return _merge_running(agg.func, state, _running_of(agg.func, entry))


def _insert(entries: list[list[Any]], func: str, entry: list[Any]) -> list[list[Any]]:
    ts = entry[0]
    if not entries or entries[-1][0] < ts:  # the common case: in time order
        return [*entries, entry]
    i = bisect_left(entries, ts, key=_ts)
    if entries[i][0] == ts:
        return [*entries[:i], _combine_entries(func, entries[i], entry), *entries[i + 1 :]]
    return [*entries[:i], entry, *entries[i:]]


def _running_of(func: str, entry: list[Any]) -> Any:
    """A one-event running state from a windowed entry."""
    if func == "exists":
        return True
    if func == "count":
        return entry[1]
    if func == "sum":
        return [entry[1], entry[2]]
    if func in ("min", "max"):
        return entry[1]
    return [entry[0], entry[1]]


def _merge_running(func: str, a: Any, b: Any) -> Any:
    if func == "exists":
        return bool(a or b)
    if func == "count":
        return a + b
    if func == "sum":
        total, partials = sum_merge(a[0], a[1], b[0], b[1])
        return [total, partials]
    if a is None:
        return b
    if b is None:
        return a
    if func in ("min", "max"):
        return b if _replaces(b, a, func == "min") else a
    if b[0] > a[0] or (b[0] == a[0] and _better(b[1], a[1])):
        return b
    return a


def _window(entries: list[list[Any]], within_ms: int, now_ms: int) -> tuple[int, int]:
    """Indexes ``lo:hi`` of the entries with ``now - D < ts <= now``."""
    if not entries:
        return 0, 0
    cut = now_ms - within_ms
    lo = 0 if entries[0][0] > cut else bisect_right(entries, cut, key=_ts)
    hi = len(entries) if entries[-1][0] <= now_ms else bisect_right(entries, now_ms, key=_ts)
    return lo, hi


def _windowed_sum(entries: list[list[Any]], lo: int, hi: int) -> int | float:
    """The exact sum of ``entries[lo:hi]``, merged in order as ``_sum_merge`` does."""
    total = 0
    partials: list[float] = []
    for k in range(lo, hi):
        entry = entries[k]
        total += entry[1]
        for p in entry[2]:
            partials = fadd(partials, p)
        if total >= SPILL or total <= -SPILL:
            partials = fadd(partials, float(total))
            total = 0
    return sum_result(total, partials)


def agg_value(state: Any, agg: Aggregate, now_ms: int) -> Any:
    func = agg.func
    within = agg.within_ms
    if within is None:
        if func == "exists":
            return bool(state)
        if func == "sum":
            return sum_result(state[0], state[1])
        if func == "last":
            return None if state is None else state[1]
        return state
    lo, hi = _window(state, within, now_ms)
    if func == "exists":
        return hi > lo
    if func == "count":
        n = 0
        for k in range(lo, hi):
            n += state[k][1]
        return n
    if func == "last":
        return state[hi - 1][1] if hi > lo else None
    if func == "sum":
        return _windowed_sum(state, lo, hi)
    if hi == lo:
        return None
    return _extreme((entry[1] for entry in state[lo:hi]), func == "min")


def agg_reader(agg: Aggregate) -> Callable[[Any, int], Any]:
    """``agg_value`` of one aggregate as a closure ``read(state, now_ms)``: the choices that
    depend on the call alone (function, window) are made once, for the per-evaluation path."""
    func = agg.func
    within = agg.within_ms
    if within is None:
        if func == "exists":
            return lambda state, now_ms: bool(state)
        if func == "sum":
            return lambda state, now_ms: sum_result(state[0], state[1])
        if func == "last":
            return lambda state, now_ms: None if state is None else state[1]
        return lambda state, now_ms: state
    d = within

    def bounds(state: list[list[Any]], now_ms: int) -> tuple[int, int]:
        cut = now_ms - d
        lo = 0 if state[0][0] > cut else bisect_right(state, cut, key=_ts)
        hi = len(state) if state[-1][0] <= now_ms else bisect_right(state, now_ms, key=_ts)
        return lo, hi

    if func == "exists":

        def read_exists(state: Any, now_ms: int) -> Any:
            if not state:
                return False
            cut = now_ms - d
            # Some entry with cut < ts <= now: the first one after cut is at most now.
            if state[0][0] > cut:
                return bool(state[0][0] <= now_ms)
            i = bisect_right(state, cut, key=_ts)
            return i < len(state) and state[i][0] <= now_ms

        return read_exists
    if func == "count":

        def read_count(state: Any, now_ms: int) -> Any:
            if not state:
                return 0
            lo, hi = bounds(state, now_ms)
            n = 0
            for k in range(lo, hi):
                n += state[k][1]
            return n

        return read_count
    if func == "last":

        def read_last(state: Any, now_ms: int) -> Any:
            if not state:
                return None
            lo, hi = bounds(state, now_ms)
            return state[hi - 1][1] if hi > lo else None

        return read_last
    if func == "sum":

        def read_sum(state: Any, now_ms: int) -> Any:
            if not state:
                return 0
            lo, hi = bounds(state, now_ms)
            return _windowed_sum(state, lo, hi)

        return read_sum
    smallest = func == "min"

    def read_extreme(state: Any, now_ms: int) -> Any:
        if not state:
            return None
        lo, hi = bounds(state, now_ms)
        if hi == lo:
            return None
        best = state[lo][1]
        for k in range(lo + 1, hi):
            v = state[k][1]
            if (v < best) if smallest else (v > best):
                best = v
            elif v == best and type(best) is float and type(v) is not float:
                best = v  # as `_replaces`: ints before floats among equal values
        return best

    return read_extreme


def agg_merge(a: Any, b: Any, agg: Aggregate) -> Any:
    """The state of two profiles merged into one; commutative and associative."""
    if agg.within_ms is None:
        return _merge_running(agg.func, a, b)
    out: list[list[Any]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][0] < b[j][0]:
            out.append(a[i])
            i += 1
        elif b[j][0] < a[i][0]:
            out.append(b[j])
            j += 1
        else:
            out.append(_combine_entries(agg.func, a[i], b[j]))
            i += 1
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out


def agg_prune(state: Any, agg: Aggregate, now_ms: int) -> Any:
    """Drop the entries that can no longer count at ``now`` or later (``ts <= now - D``)."""
    within = agg.within_ms
    if within is None or not state:
        return state
    cut = now_ms - within
    if state[0][0] > cut:
        return state
    lo = bisect_right(state, cut, key=_ts)
    return state[lo:]


def agg_next_change(state: Any, agg: Aggregate, now_ms: int) -> int | None:
    """The earliest ``t > now`` when an entry leaves the window (``ts + D``) or a future
    entry enters it (``ts``); None when nothing can change without new events."""
    within = agg.within_ms
    if within is None or not state:
        return None
    lo, hi = _window(state, within, now_ms)
    if hi > lo:
        leaves: int = state[lo][0] + within
        if hi < len(state):
            enters: int = state[hi][0]
            return enters if enters < leaves else leaves
        return leaves
    if hi < len(state):
        first: int = state[hi][0]
        return first
    return None


def agg_changes_at(state: Any, agg: Aggregate, at_ms: int) -> bool:
    """Whether an entry enters (``ts == at``) or leaves (``ts + D == at``) the window at
    exactly ``at``: False means the value at ``at`` is the value just before it. Always
    False without a window."""
    within = agg.within_ms
    if within is None or not state:
        return False
    return _has_time(state, at_ms) or _has_time(state, at_ms - within)


def _has_time(entries: list[list[Any]], ts_ms: int) -> bool:
    i = bisect_left(entries, ts_ms, key=_ts)
    return i < len(entries) and entries[i][0] == ts_ms
