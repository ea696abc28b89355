"""How a run is made: its mode, state directory, clock and topology."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class RunOptions:
    mode: Literal["files", "replay", "live"]
    state_dir: Path
    audience_out: Path | None = None
    from_ts_ms: int | None = None
    clock: Callable[[], int] = field(default=wall_clock_ms)
    idle_advance_s: float = 1.0  # live mode: event time follows the wall clock this often
    workers: int = 1  # worker threads per process
    recovery: bool = True  # Bytewax recovery on: a key with no snapshot re-emits its outbox
    processes: int = 1
    process_id: int = 0
    run: str = ""  # several processes: the run id of the shared state (flows.feedback)
    # A Kafka replay: the event partitions with records to read (`SOURCE/PARTITION`, from
    # `flows.startup.check_sources`); event time waits until each has delivered one.
    partitions: frozenset[str] = frozenset()

    @property
    def clustered(self) -> bool:
        return self.processes > 1


def routing_name(options: RunOptions) -> str:
    if options.clustered:  # "placed": shards on planned workers (flows.placement)
        return f"processes:{options.processes}x{options.workers}:placed"
    return "single" if options.workers <= 1 else "shards"
