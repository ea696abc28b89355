"""absent() state pruned the way the engine prunes it — at the watermark after every event —
still answers like a brute-force evaluation over every event, when events arrive late (older
than the watermark less the window) and when two pruned profiles merge (DESIGN §5: stream =
batch). The brute force is written here from DESIGN §5, independent of operators.aggregates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from operators.absent import absent_add, absent_init, absent_merge, absent_prune, absent_value
from operators.rules import Absent, compile_rules

Event = tuple[int, bool, bool]  # (ts, is A, is B)

# Small times and windows, so that windows overlap, events go stale and merges matter often.
times = st.integers(0, 60)
events_st = st.lists(
    st.tuples(times, st.booleans(), st.booleans()).filter(lambda e: e[1] or e[2]), max_size=12
)
windows = st.integers(1, 15)


@functools.cache
def absent_call(within: int) -> Absent:
    text = f'absent(event.b == true, after=event.a == true, within="{within}ms")'
    return compile_rules([("s", text)])[0].absents[0]


def brute(within: int, events: Sequence[Event], now: int) -> bool:
    """The latest A at or before now is at least D old and no B followed it within D."""
    a_times = [ts for ts, is_a, _ in events if is_a and ts <= now]
    if not a_times:
        return False
    t_a = max(a_times)
    return now - t_a >= within and not any(
        t_a < ts <= t_a + within for ts, _, is_b in events if is_b
    )


def stream(a: Absent, events: Sequence[Event], state: Any, now: int) -> tuple[Any, int]:
    """Events in arrival order; event time is the highest seen; prune after each, as the
    engine's evaluation does."""
    for ts, is_a, is_b in events:
        now = max(now, ts)
        state = absent_prune(absent_add(state, a, ts, {"a": is_a, "b": is_b}), a, now)
    return state, now


@given(windows, events_st, events_st, events_st, st.lists(st.integers(0, 30), max_size=4))
# The cart add (A at 7) of one profile, the purchase (B at 10) of another pruned away when the
# other's event time reached 60: merged, the purchase still follows the add within 5.
@example(5, [(7, True, False)], [(10, False, True), (60, False, True)], [], [])
# The same purchase, and the add read late, after the purchase was pruned.
@example(5, [(10, False, True), (60, False, True)], [], [(7, True, False)], [])
def test_pruned_profiles_merge_like_one_batch(
    within: int, mine: list[Event], theirs: list[Event], late: list[Event], steps: list[int]
) -> None:
    a = absent_call(within)
    # Two profiles read side by side, each pruned at the shared watermark.
    x, now_x = stream(a, mine, absent_init(a), 0)
    y, now_y = stream(a, theirs, absent_init(a), 0)
    now = max(now_x, now_y)
    merged = absent_prune(absent_merge(x, y, a), a, now)
    # Then events of any age, late ones included.
    state, now = stream(a, late, merged, now)
    everything = [*mine, *theirs, *late]
    for step in [0, *steps]:
        now += step
        state = absent_prune(state, a, now)
        assert absent_value(state, a, now) is brute(within, everything, now), now


@given(windows, events_st, times)
def test_pruned_state_stays_small(within: int, events: list[Event], now: int) -> None:
    """Only the latest A at or before now is kept of those; no B at or before it; and of any
    three kept Bs in a row the outer two are more than D apart."""
    a = absent_call(within)
    state = absent_init(a)
    for ts, is_a, is_b in events:
        state = absent_add(state, a, ts, {"a": is_a, "b": is_b})
    pruned = absent_prune(state, a, now)
    assert absent_prune(pruned, a, now) == pruned
    a_times, b_times = pruned
    past = [t for t in a_times if t <= now]
    assert len(past) <= 1
    if past:
        assert all(t > past[0] for t in b_times)
    assert all(b_times[i + 2] - b_times[i] > within for i in range(len(b_times) - 2))
