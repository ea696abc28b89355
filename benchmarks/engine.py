"""The engine alone: decode the benchmark stream, then apply it with `Engine.process` in batches,
with no Bytewax and no Kafka. For measuring a change to identity, profiles, rules or timers
without the noise of the broker and the flow around them.

    python -m benchmarks.engine --profiles 20000 --events 100000 [--batch 500] [--projection]

The records are the throughput benchmark's (same generator and seed): CRM and loyalty rows
first, then web, voice and store events interleaved by their position in their own source (as
partitions read side by side). Prints one JSON object: seconds and CPU seconds of decoding and
of the engine, records per second, changes and timer firings.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import ROOT, machine
from config.settings import DestinationSettings, load_settings
from flows.generator import generate
from operators.decode import Decoder
from operators.engine import Engine
from operators.steps.call import Output
from operators.store import open_store
from schemas.records import AudienceChange, Origin, ProfileDocument, Record

WALL_MS = 1_800_000_000_000  # emitted_at of every change: fixed, nothing reads it here


def _raw_records(profiles: int, events: int, seed: int) -> list[tuple[str, bytes]]:
    stream = generate(profiles, events, seed=seed)
    out = [(name, orjson.dumps(r)) for name in ("crm", "loyalty") for r in getattr(stream, name)]
    ranked: list[tuple[float, int, str, bytes]] = []
    for i, name in enumerate(("web", "voice", "store")):
        rows = getattr(stream, name)
        ranked.extend((n / len(rows), i, name, orjson.dumps(r)) for n, r in enumerate(rows))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return out + [(name, raw) for _, _, name, raw in ranked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "bench.yaml")
    parser.add_argument(
        "--projection",
        action="store_true",
        help="add a `profiles` destination: the engine also makes each written profile's "
        "document (DESIGN §11)",
    )
    args = parser.parse_args(argv)

    raws = _raw_records(args.profiles, args.events, args.seed)
    settings = load_settings(args.config)
    if args.projection:
        projection = DestinationSettings(name="projection", kind="profiles", path=Path("-"))
        settings = settings.model_copy(
            update={"destinations": (*settings.destinations, projection)}
        )
    decoder = Decoder.from_settings(settings)
    gc.collect()
    gc.set_threshold(50_000, 50, 1_000)  # as flows.runtime does for a run
    gc.freeze()
    offsets: dict[str, int] = {}
    started, cpu = time.perf_counter(), time.process_time()
    records: list[Record] = []
    for name, raw in raws:
        offset = offsets.get(name, 0)
        offsets[name] = offset + 1
        record = decoder.decode(Origin(name, 0, offset), raw, seq=offset + 1)
        if isinstance(record, Record):
            records.append(record)
    decode_s, decode_cpu = time.perf_counter() - started, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp), cache_mb=settings.state.cache_mb)
        engine = Engine(settings, store)
        changes = documents = 0
        outputs: list[Output] = []
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(records), args.batch):
            outputs = engine.process(0, records[i : i + args.batch], WALL_MS)
            changes += sum(1 for o in outputs if isinstance(o, AudienceChange))
            documents += sum(1 for o in outputs if isinstance(o, ProfileDocument))
        outputs = engine.finish(0, WALL_MS)
        changes += sum(1 for o in outputs if isinstance(o, AudienceChange))
        documents += sum(1 for o in outputs if isinstance(o, ProfileDocument))
        engine_s, engine_cpu = time.perf_counter() - started, time.process_time() - cpu
        store.close()
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "records": len(records),
        "decode_s": round(decode_s, 2),
        "decode_cpu_s": round(decode_cpu, 2),
        "engine_s": round(engine_s, 2),
        "engine_cpu_s": round(engine_cpu, 2),
        "engine_records_per_s": round(len(records) / engine_s),
        "changes": changes,
        "profile_documents": documents,
        "timers_fired": engine.stats.timers_fired,
        "merges": engine.stats.merges,
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
