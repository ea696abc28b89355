"""The floor: the replay pipeline with the engine taken out, to show what the stack costs before
identity, profiles and segments do anything.

    python -m benchmarks.floor --config CONFIG

Reads the config's topics with the same source, decoder, dead-letter split and read-order step
as `cdp replay`, keys every record to one Bytewax key as one worker does, and passes it through a
stateful step that holds no state and emits one audience change per record (the real engine
emits about one per record on the benchmark's rules); the changes are rendered and produced to
the config's destinations as a replay does. `benchmarks.throughput` runs it beside the real
replay and reports `floor_events_per_s`: the time per record left for the engine at a target
rate is `1/target - 1/floor`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from config.settings import Settings, load_settings
from flows.options import RunOptions, wall_clock_ms
from flows.read import decoded_records
from flows.runtime import run_flow
from flows.write import write_changes, write_dead_letters
from operators.identity import profile_id
from schemas.records import AudienceChange, Forget, Record


class _PassThrough(StatefulBatchLogic[Record | Forget, AudienceChange, None]):
    """One audience change per record, as the engine would emit it, and no state."""

    def on_batch(self, values: list[Record | Forget]) -> tuple[Iterable[AudienceChange], bool]:
        wall = wall_clock_ms()
        out = []
        for n, record in enumerate(values):
            if isinstance(record, Forget):
                continue
            pid = profile_id(record.identities[0])
            out.append(
                AudienceChange(
                    id=f"{pid}:floor:{n}",
                    segment_id="floor",
                    status="entered",
                    profile_id=pid,
                    identities={record.identities[0][0]: [record.identities[0][1]]},
                    event_time_ms=record.ts_ms or wall,
                    emitted_at_ms=wall,
                    reason=f"event:{record.event_id}",
                    sequence=1,
                    read_ns=record.read_ns,
                )
            )
        return out, self.RETAIN

    def snapshot(self) -> None:
        return None


def build_floor(settings: Settings, options: RunOptions) -> Dataflow:
    flow = Dataflow("floor")
    records, dead, _ = decoded_records(flow, settings, options)
    keyed = op.key_on("one_key", records, lambda _r: "0000")
    passed = op.stateful_batch("pass_through", keyed, lambda _resume: _PassThrough())
    changes: Any = op.key_rm("unkey", passed)
    write_changes(changes, settings, options)
    write_dead_letters(dead, settings)
    return flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(mode="replay", state_dir=Path(tmp), recovery=False)
        recovery = Path(tmp) / "recovery" if settings.recovery.enabled else None
        run_flow(build_floor(settings, options), 1, recovery, settings.recovery.epoch_interval_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
