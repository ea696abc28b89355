"""The rollout of an audience edit (DESIGN §13) over a built state, engine alone: how fast the
stored profiles are brought to the edited definitions, and how long one batch holds the engine
(a live record waits at most that long).

    python -m benchmarks.rollout --profiles 20000 --events 100000 [--batches 100 500 2000]

Builds the state once with `config/bench.yaml` (the throughput benchmark's records, applied
with `Engine.process`), then for each batch size copies it and rolls out one edit: an audience
added over events no rule read (its input rebuilt from the history), a windowed one added, a
threshold changed, an audience removed. Prints one JSON object: per batch size, profiles per
second, the batch durations (median, p99, max: the longest a record waited), and the changes
by reason.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import ROOT, machine
from benchmarks.engine import WALL_MS, _raw_records
from config.settings import Settings, load_settings
from operators.decode import Decoder
from operators.engine import Engine
from operators.store import open_store
from schemas.records import AudienceChange, Origin, Record

ADDED = {
    "two-checkouts": 'count(event.eventType == "commerce.checkouts") >= 2',
    "carts-3d": 'count(event.eventType == "commerce.productListAdds", within="3d") >= 2',
}
CHANGED = {
    "big-spenders": (
        'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases") > 100'
    )
}
REMOVED = "hoodie-lookers"


def edited(settings: Settings, batch: int) -> Settings:
    segments = [
        s.model_copy(update={"rule": CHANGED.get(s.id, s.rule)})
        for s in settings.segments
        if s.id != REMOVED
    ]
    segments += [
        settings.segments[0].model_copy(update={"id": k, "rule": v}) for k, v in ADDED.items()
    ]
    profile = settings.profile.model_copy(update={"rollout_batch": batch})
    return settings.model_copy(update={"segments": tuple(segments), "profile": profile})


def _build(settings: Settings, records: list[Record], path: Path) -> int:
    store = open_store(path, cache_mb=settings.state.cache_mb)
    engine = Engine(settings, store)
    for i in range(0, len(records), 500):
        engine.process(0, records[i : i + 500], WALL_MS)
    engine.finish(0, WALL_MS)
    profiles = sum(1 for _ in store.scan(b"p/"))
    store.close()
    return profiles


def _roll(settings: Settings, path: Path) -> dict[str, Any]:
    store = open_store(path, cache_mb=settings.state.cache_mb)
    engine = Engine(settings, store)
    durations: list[float] = []
    reasons: Counter[str] = Counter()
    started, cpu = time.perf_counter(), time.process_time()
    while engine.rolling(None):
        t0 = time.perf_counter()
        out = engine.roll(0, None, WALL_MS)
        durations.append(time.perf_counter() - t0)
        reasons.update(o.reason for o in out if isinstance(o, AudienceChange))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    checked, brought = engine.rollout.checked, engine.rollout.brought
    store.close()
    durations.sort()
    return {
        "batch": settings.profile.rollout_batch,
        "seconds": round(seconds, 2),
        "cpu_s": round(cpu_s, 2),
        "profiles_checked": checked,
        "profiles_brought": brought,
        "profiles_per_s": round(checked / seconds) if seconds else None,
        "batches": len(durations),
        "batch_ms_p50": round(1000 * durations[len(durations) // 2], 1),
        "batch_ms_p99": round(1000 * durations[int(len(durations) * 0.99)], 1),
        "batch_ms_max": round(1000 * durations[-1], 1),
        "changes_by_reason": dict(reasons),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "bench.yaml")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    decoder = Decoder.from_settings(settings)
    records: list[Record] = []
    offsets: dict[str, int] = {}
    for name, raw in _raw_records(args.profiles, args.events, args.seed):
        offset = offsets.get(name, 0)
        offsets[name] = offset + 1
        record = decoder.decode(Origin(name, 0, offset), raw, seq=offset + 1)
        if isinstance(record, Record):
            records.append(record)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        profiles = _build(settings, records, built)
        count = len(records)
        del records
        # As a worker runs (flows.runtime): without it a full collection over what the
        # benchmark itself holds lands in one batch and is counted as the rollout's.
        gc.collect()
        gc.set_threshold(50_000, 50, 1_000)
        gc.freeze()
        for batch in args.batches:
            copy = Path(tmp) / f"b{batch}"
            shutil.copytree(built, copy)
            runs.append(_roll(edited(settings, batch), copy))
            shutil.rmtree(copy)
    result = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "records": count,
        "profiles": profiles,
        "edit": {"added": sorted(ADDED), "changed": sorted(CHANGED), "removed": [REMOVED]},
        "runs": runs,
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
