"""Per-profile state of `absent(B, after=A, within=D)`, as pure functions: ``[a_times,
b_times]``, both sorted without duplicates, integer epoch milliseconds. No I/O, no clock,
arguments never mutated.

absent(B, after=A, within=D) at now: let tA be the latest A with tA <= now. True when
now - tA >= D and no B has tB in (tA, tA + D]. False when there is no such A.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from typing import Any

from operators.rules import Absent

__all__ = [
    "absent_add",
    "absent_add_known",
    "absent_changes_at",
    "absent_init",
    "absent_merge",
    "absent_next_change",
    "absent_prune",
    "absent_value",
]


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
