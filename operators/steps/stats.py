"""What the engine did, counted in plain integers on the hot path and moved to Prometheus once
a call."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from operators import metrics


@dataclass
class EngineStats:
    records: int = 0
    replayed: int = 0  # re-delivered records skipped by offset
    duplicates: int = 0  # events skipped by `_id`
    merges: int = 0
    conflicts: int = 0
    timers_fired: int = 0
    forgotten: int = 0  # records dropped because their person was deleted (tombstone)
    deleted: int = 0  # clusters deleted (GDPR)
    upgraded: int = 0  # profiles brought to edited audience definitions (rollout)
    changes: Counter[str] = field(default_factory=Counter)

    # The Prometheus counter of each count. The profile step of several processes publishes
    # neither `records` nor `replayed`: the identity step counts each record read once.
    METRICS: ClassVar[dict[str, Any]] = {
        "records": metrics.APPLIED,
        "replayed": metrics.REPLAYED,
        "duplicates": metrics.DUPLICATES,
        "merges": metrics.LINKS,
        "timers_fired": metrics.TIMERS,
        "forgotten": metrics.FORGOTTEN,
        "deleted": metrics.DELETES,
        "upgraded": metrics.UPGRADED,
    }


class Published:
    """Moves the engine's counts to Prometheus once a call, not one `inc` (and lock) a record
    or an audience change."""

    def __init__(self, stats: EngineStats, *, records: bool) -> None:
        self._stats = stats
        self._counters = {
            name: counter
            for name, counter in EngineStats.METRICS.items()
            if records or name not in ("records", "replayed")
        }
        self._seen = {name: 0 for name in self._counters}
        self.changes: dict[tuple[str, str], int] = {}  # (segment, status) -> count, this call

    def publish(self) -> None:
        stats = self._stats
        for name, counter in self._counters.items():
            now = getattr(stats, name)
            if now != self._seen[name]:
                counter.inc(now - self._seen[name])
                self._seen[name] = now
        if self.changes:
            for (segment, status), n in self.changes.items():
                stats.changes[f"{segment}:{status}"] += n
                metrics.changes(segment, status).inc(n)
            self.changes.clear()
