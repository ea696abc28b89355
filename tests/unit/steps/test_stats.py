"""operators.steps.stats alone: counts on the hot path, moved to Prometheus once a call."""

from __future__ import annotations

from typing import Any

from operators import metrics
from operators.steps.stats import EngineStats, Published


def value(counter: Any) -> float:
    return float(counter._value.get())


def test_publish_moves_only_what_changed_since_the_last_call() -> None:
    stats = EngineStats()
    published = Published(stats, records=True)
    applied, dups = value(metrics.APPLIED), value(metrics.DUPLICATES)
    stats.records += 3
    stats.duplicates += 1
    published.publish()
    assert value(metrics.APPLIED) - applied == 3 and value(metrics.DUPLICATES) - dups == 1
    published.publish()  # nothing new: nothing counted twice
    assert value(metrics.APPLIED) - applied == 3
    stats.records += 2
    published.publish()
    assert value(metrics.APPLIED) - applied == 5


def test_the_profile_step_of_several_processes_publishes_no_record_counts() -> None:
    """The identity step counts each record read once; its profile steps must not again."""
    stats = EngineStats()
    published = Published(stats, records=False)
    applied, replayed, timers = (
        value(metrics.APPLIED),
        value(metrics.REPLAYED),
        value(metrics.TIMERS),
    )
    stats.records, stats.replayed, stats.timers_fired = 4, 2, 1
    published.publish()
    assert value(metrics.APPLIED) == applied and value(metrics.REPLAYED) == replayed
    assert value(metrics.TIMERS) - timers == 1


def test_changes_of_a_call_are_added_up_and_cleared() -> None:
    stats = EngineStats()
    published = Published(stats, records=True)
    entered = metrics.changes("steps-test", "entered")
    before = value(entered)
    published.changes[("steps-test", "entered")] = 2
    published.publish()
    published.publish()  # cleared by the first: not counted twice
    published.changes[("steps-test", "entered")] = 1
    published.changes[("steps-test", "exited")] = 1
    published.publish()
    assert stats.changes == {"steps-test:entered": 3, "steps-test:exited": 1}
    assert value(entered) - before == 3
    assert published.changes == {}
