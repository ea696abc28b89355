"""The counting termination detector that ends a replay on several processes (DESIGN §3)."""

from __future__ import annotations

from dataclasses import replace

from flows.feedback import Status, Termination


def status(process: int, n: int, **counts: int) -> Status:
    base = dict.fromkeys(
        (
            "parts_ended",
            "read",
            "dropped",
            "raw_out",
            "graph_out",
            "graph_done",
            "fb_out",
            "fb_done",
        ),
        0,
    )
    return Status(process=process, started_ns=1, n=n, **{**base, **counts})


BALANCED = {"parts_ended": 1, "read": 10, "raw_out": 10, "graph_out": 12, "graph_done": 12}


def test_needs_every_process_and_two_balanced_rounds() -> None:
    t = Termination(processes=2, input_parts=2)
    assert not t.observe(status(0, 1, **BALANCED))
    assert not t.observe(status(1, 1, **BALANCED))  # first balanced round
    assert not t.observe(status(0, 2, **BALANCED))  # process 1 has not reported again
    assert t.observe(status(1, 2, **BALANCED))
    assert t.finished


def test_work_in_flight_or_unread_inputs_keep_it_going() -> None:
    unbalanced = [
        {**BALANCED, "parts_ended": 0},  # an input partition is still being read
        {**BALANCED, "raw_out": 9},  # a record on its way to the graph step
        {**BALANCED, "graph_done": 11},  # a graph output not yet applied
        {**BALANCED, "fb_out": 1},  # a moved profile still in the feedback topic
    ]
    for counts in unbalanced:
        t = Termination(processes=2, input_parts=2)
        for n in range(1, 6):
            assert not t.observe(status(0, n, **counts))
            assert not t.observe(status(1, n, **BALANCED))


def test_totals_must_hold_still_between_rounds() -> None:
    t = Termination(processes=2, input_parts=2)
    t.observe(status(0, 1, **BALANCED))
    t.observe(status(1, 1, **BALANCED))
    more = {**BALANCED, "read": 11, "raw_out": 11}  # new work done between the rounds
    t.observe(status(0, 2, **more))
    assert not t.observe(status(1, 2, **BALANCED))
    t.observe(status(0, 3, **more))
    assert t.observe(status(1, 3, **BALANCED))


def test_old_or_repeated_statuses_are_ignored() -> None:
    t = Termination(processes=1, input_parts=1)
    first = status(0, 5, **BALANCED)
    assert not t.observe(first)
    assert not t.observe(first)  # the same status twice is not a second round
    assert not t.observe(replace(first, n=4))
    assert t.observe(replace(first, n=6))


def test_a_restarted_process_replaces_its_earlier_statuses() -> None:
    """After a crash the topic still holds the dead process's statuses, with higher numbers
    than the new process's first ones: the start time orders them."""
    t = Termination(processes=1, input_parts=1)
    stale = replace(status(0, 40, **{**BALANCED, "read": 3, "raw_out": 2}), started_ns=1)
    assert not t.observe(stale)
    fresh = replace(status(0, 1, **BALANCED), started_ns=2)
    assert not t.observe(fresh)
    assert not t.observe(stale)  # read again: older than what is held
    assert t.latest[0] == fresh
    assert t.observe(replace(fresh, n=2))
