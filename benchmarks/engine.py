"""The engine alone: decode the benchmark stream, then apply it with `Engine.process` in batches,
with no Bytewax and no Kafka. For measuring a change to identity, profiles, rules or timers
without the noise of the broker and the flow around them.

    python -m benchmarks.engine --profiles 20000 --events 100000 [--batch 500] [--projection]
        [--history on off [--repeat 2]] [--journeys on off [--repeat 2]]

The records are the throughput benchmark's (same generator and seed): CRM and loyalty rows
first, then web, voice and store events interleaved by their position in their own source (as
partitions read side by side). Prints one JSON object: seconds and CPU seconds of decoding and
of the engine, records per second, changes and timer firings, the state's size on disk.

The per-profile event history (DESIGN §13, `profile.history`) is as the config sets it unless
`--history` is given (`config/bench.yaml` keeps the default: on, 5,000 events, 90 days). With
`--history on off` the same decoded records go through a fresh engine and state once per mode
(`off`: `max_events: 0`; `on`: the config's history, or the default one if the config turns
it off), `--repeat` times, the order alternating from one repeat to the next; `runs` lists
every run and `history_cost` compares the modes' medians: engine CPU µs per record with and
without the history, the difference and its share, the state's size on disk (compacted) and
the difference per 100,000 events kept. The top-level figures are the first run's.

With `--journeys on off` (not with `--history`) the same goes for the bench journeys
(`benchmarks.common.bench_journeys`: an event-triggered and a segment-triggered journey, their
sends to two file destinations): `on` adds them to the config, `off` runs it as it is. Each run
reports the journey sends made and this process's resident memory at its end; `journey_cost`
compares the modes' medians.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    HISTORY_MODES,
    JOURNEY_MODES,
    ROOT,
    history_held,
    history_overrides,
    journeys_config,
    machine,
    rss_mb,
    state_disk,
)
from config.settings import DestinationSettings, Settings, load_settings
from flows.generator import generate
from operators import metrics
from operators.decode import Decoder
from operators.engine import Engine
from operators.store import open_store
from schemas.records import AudienceChange, JourneySend, Origin, ProfileDocument, Record

WALL_MS = 1_800_000_000_000  # emitted_at of every change: fixed (2027-01-15; journeys: `late`)


def _raw_records(profiles: int, events: int, seed: int) -> list[tuple[str, bytes]]:
    stream = generate(profiles, events, seed=seed)
    out = [(name, orjson.dumps(r)) for name in ("crm", "loyalty") for r in getattr(stream, name)]
    ranked: list[tuple[float, int, str, bytes]] = []
    for i, name in enumerate(("web", "voice", "store")):
        rows = getattr(stream, name)
        ranked.extend((n / len(rows), i, name, orjson.dumps(r)) for n, r in enumerate(rows))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return out + [(name, raw) for _, _, name, raw in ranked]


def journey_outcomes() -> Counter[str]:
    """The journeys' outcomes so far in this process (`cdp_journey_steps`, all journeys and
    steps): entered, sent, completed, exited_REASON, held_out, capped, late, …"""
    out: Counter[str] = Counter()
    for metric in metrics.JOURNEYS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["outcome"]] += int(sample.value)
    return out


def _apply(settings: Settings, records: list[Record], batch: int) -> dict[str, Any]:
    """One engine over a fresh state in a temporary directory: its time, outputs and state."""
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp), cache_mb=settings.state.cache_mb)
        engine = Engine(settings, store)
        counts: Counter[type] = Counter()
        outcomes = journey_outcomes()
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(records), batch):
            counts.update(type(o) for o in engine.process(0, records[i : i + batch], WALL_MS))
        counts.update(type(o) for o in engine.finish(0, WALL_MS))
        engine_s, engine_cpu = time.perf_counter() - started, time.process_time() - cpu
        rss = rss_mb()
        outcomes = journey_outcomes() - outcomes
        held = history_held(store)
        store.close()
        disk = state_disk(Path(tmp))
    return {
        "engine_s": round(engine_s, 2),
        "engine_cpu_s": round(engine_cpu, 2),
        "engine_records_per_s": round(len(records) / engine_s),
        "engine_cpu_us_per_record": round(engine_cpu / len(records) * 1e6, 1),
        "changes": counts[AudienceChange],
        "profile_documents": counts[ProfileDocument],
        "journey_sends": counts[JourneySend],
        "journey_outcomes": dict(sorted(outcomes.items())),
        "timers_fired": engine.stats.timers_fired,
        "merges": engine.stats.merges,
        "rss_mb_end": rss,
        **held,
        **disk,
    }


def history_cost(runs: list[dict[str, Any]], events: int) -> dict[str, Any]:
    """The modes compared, on the median of each mode's runs: what keeping the history costs."""

    def median(mode: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs if r["history"] == mode)), 2)

    on_us, off_us = (
        median("on", "engine_cpu_us_per_record"),
        median("off", "engine_cpu_us_per_record"),
    )
    on_mb, off_mb = median("on", "state_mb_compacted"), median("off", "state_mb_compacted")
    return {
        "engine_cpu_us_per_record_on": on_us,
        "engine_cpu_us_per_record_off": off_us,
        "us_per_record": round(on_us - off_us, 1),
        "percent": round((on_us - off_us) / off_us * 100, 1),
        "engine_records_per_s_on": median("on", "engine_records_per_s"),
        "engine_records_per_s_off": median("off", "engine_records_per_s"),
        "state_mb_compacted_on": on_mb,
        "state_mb_compacted_off": off_mb,
        "state_mb_per_100k_events": round((on_mb - off_mb) / events * 100_000, 1),
        "same_changes": len({r["changes"] for r in runs}) == 1,
    }


def journey_cost(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs with the bench journeys and without compared, on each mode's medians."""

    def median(mode: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs if r["journeys"] == mode)), 2)

    on_us, off_us = (
        median("on", "engine_cpu_us_per_record"),
        median("off", "engine_cpu_us_per_record"),
    )
    return {
        "engine_cpu_us_per_record_on": on_us,
        "engine_cpu_us_per_record_off": off_us,
        "us_per_record": round(on_us - off_us, 1),
        "percent": round((on_us - off_us) / off_us * 100, 1),
        "engine_records_per_s_on": median("on", "engine_records_per_s"),
        "engine_records_per_s_off": median("off", "engine_records_per_s"),
        "journey_sends_on": median("on", "journey_sends"),
        "state_mb_compacted_on": median("on", "state_mb_compacted"),
        "state_mb_compacted_off": median("off", "state_mb_compacted"),
        "same_changes": len({r["changes"] for r in runs}) == 1,
    }


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
    parser.add_argument(
        "--history",
        nargs="+",
        choices=HISTORY_MODES,
        help="run once per mode (on, off) instead of with the config's history",
    )
    parser.add_argument(
        "--journeys",
        nargs="+",
        choices=JOURNEY_MODES,
        help="run once per mode: with the bench journeys added to the config (on), without (off)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each --history or --journeys mode"
    )
    args = parser.parse_args(argv)
    if args.history and args.journeys:
        parser.error("--history and --journeys are measured apart: give one of them")

    raws = _raw_records(args.profiles, args.events, args.seed)

    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))

    def load(overrides: dict[str, int], journeys: bool = False) -> Settings:
        config = args.config
        if journeys:
            config = journeys_config(config, work / "journeys.yaml", work / "sends")
        settings = load_settings(config, overrides=overrides)
        if not args.projection:
            return settings
        projection = DestinationSettings(name="projection", kind="profiles", path=Path("-"))
        return settings.model_copy(update={"destinations": (*settings.destinations, projection)})

    settings = load({})
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
    events = sum(1 for r in records if r.kind == "event")

    modes: list[str | None] = list(args.history or args.journeys or [None])
    configured = settings.profile.history.max_events
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeat if args.history or args.journeys else 1):
        for mode in modes if repeat % 2 == 0 else modes[::-1]:
            own = settings
            if args.journeys:
                own = load({}, journeys=mode == "on")
            elif mode is not None:
                own = load(history_overrides(configured, mode))
            history = "on" if own.profile.history.enabled else "off"
            runs.append(
                {
                    "history": mode if args.history else history,
                    "journeys": "on" if own.journeys else "off",
                    **_apply(own, records, args.batch),
                }
            )
    shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "records": len(records),
        "events": events,
        "decode_s": round(decode_s, 2),
        "decode_cpu_s": round(decode_cpu, 2),
        **runs[0],
    }
    if args.history or args.journeys:
        result["runs"] = runs
    if args.history and {"on", "off"} <= set(args.history):
        result["history_cost"] = history_cost(runs, events)
    if args.journeys and {"on", "off"} <= set(args.journeys):
        result["journey_cost"] = journey_cost(runs)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
