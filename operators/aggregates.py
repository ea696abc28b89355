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
* absent: ``[a_times, b_times]``, both sorted without duplicates.

Sums are exact and independent of arrival order: integers add exactly and floats are kept as
Shewchuk partials (the non-overlapping floats ``math.fsum`` uses) whose exact total is rounded
once when the value is read.

``last`` is the value of the matching event with the greatest time; between values at the same
time, the greatest JSON encoding (``_order_key``) wins, so the result never depends on arrival
order.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from operator import itemgetter
from typing import Any

from operators.rules import Absent, Aggregate

__all__ = [
    "absent_add",
    "absent_add_known",
    "absent_changes_at",
    "absent_init",
    "absent_merge",
    "absent_next_change",
    "absent_prune",
    "absent_value",
    "agg_add",
    "agg_changes_at",
    "agg_init",
    "agg_merge",
    "agg_next_change",
    "agg_prune",
    "agg_reader",
    "agg_value",
]

_SPILL = 2**62  # an integer total this large moves into the float partials (orjson: 64 bits)


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


# ------------------------------------------------------------------------- exact sums


def _fadd(partials: list[float], x: float) -> list[float]:
    """Shewchuk's algorithm (``math.fsum``): partials whose exact sum is sum + x."""
    out: list[float] = []
    for partial in partials:
        y = partial
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            out.append(lo)
        x = hi
    out.append(x)
    return out


def _sum_add(total: int, partials: list[float], values: list[Any]) -> tuple[int, list[float]]:
    for value in values:
        if type(value) is int:
            total += value
        else:
            partials = _fadd(partials, float(value))
    if abs(total) >= _SPILL:
        # Far beyond any real amount; keeps the state storable at the cost of exactness.
        partials = _fadd(partials, float(total))
        total = 0
    return total, partials


def _sum_merge(
    a_total: int, a_partials: list[float], b_total: int, b_partials: list[float]
) -> tuple[int, list[float]]:
    partials = list(a_partials)
    for p in b_partials:
        partials = _fadd(partials, p)
    return _sum_add(a_total + b_total, partials, [])


def _sum_result(total: int, partials: list[float]) -> int | float:
    """The exact total rounded once; an int when no float was ever added."""
    if not partials:
        return total
    as_float = float(total)
    if int(as_float) == total:
        return math.fsum([*partials, as_float])
    exact = Fraction(total) + sum((Fraction(p) for p in partials), Fraction(0))
    return float(exact)


# ------------------------------------------------------------------- entry combinators


def _combine_entries(func: str, a: list[Any], b: list[Any]) -> list[Any]:
    """Two entries of the same timestamp as one."""
    ts = a[0]
    if func in ("exists", "count"):
        return [ts, a[1] + b[1]]
    if func == "sum":
        total, partials = _sum_merge(a[1], a[2], b[1], b[2])
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
        total, partials = _sum_add(0, [], values)
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
        total, partials = _sum_merge(a[0], a[1], b[0], b[1])
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
            partials = _fadd(partials, p)
        if total >= _SPILL or total <= -_SPILL:
            partials = _fadd(partials, float(total))
            total = 0
    return _sum_result(total, partials)


def agg_value(state: Any, agg: Aggregate, now_ms: int) -> Any:
    func = agg.func
    within = agg.within_ms
    if within is None:
        if func == "exists":
            return bool(state)
        if func == "sum":
            return _sum_result(state[0], state[1])
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
            return lambda state, now_ms: _sum_result(state[0], state[1])
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


# ----------------------------------------------------------------------------- absent
#
# absent(B, after=A, within=D) at now: let tA be the latest A with tA <= now. True when
# now - tA >= D and no B has tB in (tA, tA + D]. False when there is no such A.


def absent_init(a: Absent) -> Any:
    return [[], []]


def _with_time(times: list[int], ts_ms: int) -> list[int]:
    if not times or times[-1] < ts_ms:  # the common case: in time order
        return [*times, ts_ms]
    i = bisect_left(times, ts_ms)
    if times[i] == ts_ms:
        return times
    return [*times[:i], ts_ms, *times[i:]]


def absent_add(state: Any, a: Absent, ts_ms: int, event: Mapping[str, Any]) -> Any:
    """The state after an event that is an A, a B or both (each is checked here)."""
    return absent_add_known(state, ts_ms, a.after(event), a.missing(event))


def absent_add_known(state: Any, ts_ms: int, is_after: bool, is_missing: bool) -> Any:
    """``absent_add`` when the caller has already tested the event: an A (``is_after``),
    a B (``is_missing``), or both."""
    a_times, b_times = state
    if is_after:
        a_times = _with_time(a_times, ts_ms)
    if is_missing:
        b_times = _with_time(b_times, ts_ms)
    if a_times is state[0] and b_times is state[1]:
        return state
    return [a_times, b_times]


def _latest_a(a_times: list[int], now_ms: int) -> tuple[int, int | None]:
    i = bisect_right(a_times, now_ms)
    return i, (a_times[i - 1] if i else None)


def absent_value(state: Any, a: Absent, now_ms: int) -> bool:
    a_times, b_times = state
    i = bisect_right(a_times, now_ms)
    if not i:
        return False
    t_a = a_times[i - 1]
    within = a.within_ms
    if now_ms - t_a < within:
        return False
    if not b_times:
        return True
    j = bisect_right(b_times, t_a)
    return not (j < len(b_times) and b_times[j] <= t_a + within)


def absent_merge(x: Any, y: Any, a: Absent) -> Any:
    return [sorted(set(x[0]) | set(y[0])), sorted(set(x[1]) | set(y[1]))]


def absent_prune(state: Any, a: Absent, now_ms: int) -> Any:
    """Keep what values at ``now`` or later can need, whatever arrives later: the latest A at
    or before now and every later A; and the Bs after that latest A (all of them while there
    is no A), less those whose neighbours are within D of each other.

    Bs cannot be pruned by time alone: an older A can still become the latest — a late event,
    or the A of another profile merged into this one (an anonymous device's purchase 10
    minutes after the cart add of the logged-in person it turns out to be) — and then every B
    in ``(tA, tA + D]`` matters. The latest A only ever grows (adding and merging keep the
    maximum), so Bs at or before it never matter again. Of three Bs ``b0 < b1 < b2`` with
    ``b2 - b0 <= D``, ``b1`` is redundant: every window of length D that holds b1 holds b0 or
    b2, so "some B in ``(t, t + D]``" keeps its answer for every t.
    """
    a_times, b_times = state
    i = bisect_right(a_times, now_ms)
    kept_a = a_times[i - 1 :] if i > 1 else a_times
    if not b_times:
        if len(kept_a) == len(a_times):
            return state
        return [kept_a, b_times]
    j = bisect_right(b_times, a_times[i - 1]) if i else 0
    candidates = b_times[j:] if j else b_times
    kept_b = _thin(candidates, a.within_ms)
    if len(kept_a) == len(a_times) and len(kept_b) == len(b_times):
        return state
    return [kept_a, kept_b]


def _thin(times: list[int], within_ms: int) -> list[int]:
    """Drop each time whose kept left neighbour and next time are within D of each other."""
    if len(times) <= 2:
        return times
    out = [times[0]]
    for k in range(1, len(times) - 1):
        if times[k + 1] - out[-1] > within_ms:
            out.append(times[k])
    out.append(times[-1])
    return out


def absent_changes_at(state: Any, a: Absent, at_ms: int) -> bool:
    """Whether an A becomes the latest (``tA == at``) or D old (``tA + D == at``) at exactly
    ``at``: False means the value at ``at`` is the value just before it."""
    a_times = state[0]
    for t in (at_ms, at_ms - a.within_ms):
        i = bisect_left(a_times, t)
        if i < len(a_times) and a_times[i] == t:
            return True
    return False


def absent_next_change(state: Any, a: Absent, now_ms: int) -> int | None:
    """The earliest ``t > now`` when the value can change: the current A becoming D old, or
    a later A becoming the latest."""
    a_times, _ = state
    i, t_a = _latest_a(a_times, now_ms)
    candidates = []
    if t_a is not None and t_a + a.within_ms > now_ms:
        candidates.append(t_a + a.within_ms)
    if i < len(a_times):
        candidates.append(a_times[i])
    return min(candidates) if candidates else None
