"""Throughput: the whole pipeline in replay mode (Kafka in -> audience changes out) next to the
ceiling, a bare loop that only consumes the same topics and parses each value with orjson.

    python -m benchmarks.throughput --profiles 100000 --events 500000 [--workers 1 2]
        [--processes 2] [--history on off | --journeys on off] [--repeat 2]

Each run is a `cdp replay` over the same topics into a fresh state: one process per value of
`--workers` (that many worker threads), then a cluster per value of `--processes` (that many
processes of one worker each, `-i/-a`; they share the machine's cores with the broker). The
top-level numbers are the first run's. Before them the floor runs (`benchmarks.floor`, off with
`--no-floor`): the same pipeline with the engine taken out, one change out per record in, as
`floor_events_per_s`. Starts a local broker unless KAFKA_BOOTSTRAP_SERVERS is
set. Prints one JSON object.

The per-profile event history (DESIGN §13, `profile.history`) is as the config sets it unless
`--history` is given (`config/bench.yaml` keeps the default: on, 5,000 events, 90 days). With
`--history on off` every topology runs once per mode over the same topics, each into a fresh
state (`off`: `max_events: 0`; `on`: the config's history, or the default one if the config
turns it off), `--repeat` times, the order alternating from one repeat to the next. Each run
reports its history mode, the events its state keeps and the state's size on disk (as left,
and compacted); `history_cost` compares the modes' medians per topology: events/s, seconds
and CPU µs per record with and without the history, and the state's size per 100,000 events.

With `--journeys on off` (not with `--history`) the same goes for the bench journeys
(`benchmarks.common.bench_journeys`: `on` adds them and the two file destinations their sends go
to). Each run reports its journey mode and the sends written to those files (`journey_sends`);
`journey_cost` compares the modes' medians per topology: events/s, CPU µs per record, RSS.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from benchmarks.common import (
    HISTORY_MODES,
    JOURNEY_MODES,
    ROOT,
    bench_config,
    bench_journeys,
    free_port,
    history_held,
    machine,
    run_cluster,
    run_id,
    sends_written,
    state_disk,
)
from flows.generator import generate
from operators.store import open_state
from tests.kafka_broker import broker_from_env, consume_all, create_topics, produce

PARTITIONS = {"crm": 1, "loyalty": 1, "web": 2, "voice": 1, "store": 1}


def ceiling(bootstrap: str, topics: list[str], expected: int) -> float:
    """Seconds for a bare consumer to read every record and parse it with orjson."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ceiling",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "fetch.wait.max.ms": "10",
        }
    )
    parts = [
        TopicPartition(t, p, OFFSET_BEGINNING)
        for t in topics
        for p in consumer.list_topics(t, timeout=10).topics[t].partitions
    ]
    started = time.monotonic()
    consumer.assign(parts)
    done, seen = 0, 0
    while done < len(parts):
        for msg in consumer.consume(1000, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done += 1
                    continue
                raise RuntimeError(str(err))
            orjson.loads(msg.value() or b"")
            seen += 1
    seconds = time.monotonic() - started
    consumer.close()
    if seen != expected:
        raise RuntimeError(f"ceiling read {seen} records, expected {expected}")
    return seconds


def _median(runs: list[dict[str, Any]], mode: str, key: str, by: str = "history") -> float:
    return round(float(statistics.median(r[key] for r in runs if r[by] == mode)), 2)


def history_cost(runs: list[dict[str, Any]], records: int, events: int) -> list[dict[str, Any]]:
    """Each topology's runs with the history on and off compared, on each mode's medians."""
    out = []
    for topology in sorted({(r["processes"], r["workers"]) for r in runs}):
        own = [r for r in runs if (r["processes"], r["workers"]) == topology]
        seconds = {mode: _median(own, mode, "seconds") for mode in HISTORY_MODES}
        cpu_us = {mode: round(_median(own, mode, "cpu_s") / records * 1e6, 1) for mode in seconds}
        mb = {mode: _median(own, mode, "state_mb_compacted") for mode in seconds}
        out.append(
            {
                "processes": topology[0],
                "workers": topology[1],
                "events_per_s_on": round(records / seconds["on"]),
                "events_per_s_off": round(records / seconds["off"]),
                "percent_slower": round((seconds["on"] - seconds["off"]) / seconds["off"] * 100, 1),
                "seconds_us_per_record": round((seconds["on"] - seconds["off"]) / records * 1e6, 1),
                "cpu_us_per_record_on": cpu_us["on"],
                "cpu_us_per_record_off": cpu_us["off"],
                "cpu_us_per_record": round(cpu_us["on"] - cpu_us["off"], 1),
                "rss_mb_on": _median(own, "on", "rss_mb"),
                "rss_mb_off": _median(own, "off", "rss_mb"),
                "state_mb_compacted_on": mb["on"],
                "state_mb_compacted_off": mb["off"],
                "state_mb_per_100k_events": round((mb["on"] - mb["off"]) / events * 100_000, 1),
            }
        )
    return out


def journey_cost(runs: list[dict[str, Any]], records: int) -> list[dict[str, Any]]:
    """Each topology's runs with the bench journeys and without compared, on each mode's
    medians."""
    out = []
    for topology in sorted({(r["processes"], r["workers"]) for r in runs}):
        own = [r for r in runs if (r["processes"], r["workers"]) == topology]
        seconds = {m: _median(own, m, "seconds", "journeys") for m in JOURNEY_MODES}
        cpu_us = {
            m: round(_median(own, m, "cpu_s", "journeys") / records * 1e6, 1) for m in seconds
        }
        out.append(
            {
                "processes": topology[0],
                "workers": topology[1],
                "events_per_s_on": round(records / seconds["on"]),
                "events_per_s_off": round(records / seconds["off"]),
                "percent_slower": round((seconds["on"] - seconds["off"]) / seconds["off"] * 100, 1),
                "cpu_us_per_record_on": cpu_us["on"],
                "cpu_us_per_record_off": cpu_us["off"],
                "cpu_us_per_record": round(cpu_us["on"] - cpu_us["off"], 1),
                "rss_mb_on": _median(own, "on", "rss_mb", "journeys"),
                "rss_mb_off": _median(own, "off", "rss_mb", "journeys"),
                "journey_sends_on": _median(own, "on", "journey_sends", "journeys"),
                "audience_changes_on": _median(own, "on", "audience_changes", "journeys"),
                "audience_changes_off": _median(own, "off", "audience_changes", "journeys"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--processes", type=int, nargs="*", default=[])
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the pipeline with the engine taken out (benchmarks.floor)",
    )
    parser.add_argument(
        "--history",
        nargs="+",
        choices=HISTORY_MODES,
        help="run each topology once per mode (on, off) instead of with the config's history",
    )
    parser.add_argument(
        "--journeys",
        nargs="+",
        choices=JOURNEY_MODES,
        help="run each topology once per mode: with the bench journeys (on), without (off)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each --history or --journeys mode"
    )
    args = parser.parse_args(argv)
    if args.history and args.journeys:
        parser.error("--history and --journeys are measured apart: give one of them")

    stream = generate(args.profiles, args.events, seed=args.seed)
    sources: dict[str, list[dict[str, Any]]] = {
        "crm": stream.crm,
        "loyalty": stream.loyalty,
        "web": stream.web,
        "voice": stream.voice,
        "store": stream.store,
    }
    records = sum(len(v) for v in sources.values())
    prefix = run_id()
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "profiles_generated": args.profiles,
    }
    with broker_from_env() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        topics = {name: f"{prefix}luma.{name}" for name in sources}
        create_topics(bootstrap, [f"{prefix}cdp.dead-letters"])
        for name, topic in topics.items():
            create_topics(bootstrap, [topic], partitions=PARTITIONS[name])
            produce(
                bootstrap,
                topic,
                [orjson.dumps(r) for r in sources[name]],
                key_fn=(lambda v: v[:64]) if PARTITIONS[name] > 1 else None,
            )

        def run_config(
            name: str, history: str | None = None, journeys: bool = False, **extra: Any
        ) -> tuple[Path, str]:
            """The bench config for one run, with an output topic of its own: each run's
            changes are counted alone; with the bench journeys, their sends go to files in
            `sends-NAME`."""
            out_topic = f"{prefix}cdp.audience-changes-{name}"
            create_topics(bootstrap, [out_topic])
            destinations = [{"name": "audiences", "kind": "kafka", "topic": out_topic}]
            if journeys:
                added = bench_journeys(Path(tmp) / f"sends-{name}")
                destinations.extend(added.pop("destinations"))
                extra.update(added)
            path = bench_config(
                ROOT / "config" / "bench.yaml",
                Path(tmp) / f"bench-{name}.yaml",
                prefix,
                bootstrap,
                history,
                destinations=destinations,
                **extra,
            )
            return path, out_topic

        ceiling_s = ceiling(bootstrap, list(topics.values()), records)
        result.update(
            {
                "events": records,
                "ceiling_s": round(ceiling_s, 2),
                "ceiling_events_per_s": round(records / ceiling_s),
            }
        )
        if args.floor:
            floor_config, _ = run_config("floor")
            cmd = [sys.executable, "-m", "benchmarks.floor", "--config", str(floor_config)]
            floor_s, floor_rss, floor_cpu = run_cluster([cmd], timeout_s=3600)
            result.update(
                {
                    "floor_s": round(floor_s, 2),
                    "floor_events_per_s": round(records / floor_s),
                    "floor_rss_mb": floor_rss[0],
                    "floor_cpu_s": floor_cpu[0],
                }
            )
        topologies = [(1, w) for w in args.workers] + [(p, 1) for p in args.processes]
        modes: list[str | None] = list(args.history or args.journeys or [None])
        plan = [
            (processes, workers, repeat, mode)
            for processes, workers in topologies
            for repeat in range(args.repeat if args.history or args.journeys else 1)
            for mode in (modes if repeat % 2 == 0 else modes[::-1])
        ]
        for processes, workers, repeat, mode in plan:
            name = f"{processes}x{workers}" + (f"-{mode}-{repeat}" if mode else "")
            state = Path(tmp) / f"state-{name}"
            own, out_topic = run_config(
                name,
                mode if args.history else None,
                journeys=bool(args.journeys) and mode == "on",
                identity={"feedback_topic": f"{prefix}feedback-{name}"},
            )
            cmd = [
                sys.executable, "-m", "flows.cli", "replay", "--config", str(own),
                "--state-dir", str(state), "--workers", str(workers), "--quiet",
            ]  # fmt: skip
            if processes == 1:
                seconds, peaks, cpu = run_cluster([cmd], timeout_s=4 * 3600)
            else:
                addresses = [
                    a for _ in range(processes) for a in ("-a", f"127.0.0.1:{free_port()}")
                ]
                cmds = [[*cmd, "-i", str(i), *addresses] for i in range(processes)]
                seconds, peaks, cpu = run_cluster(cmds, timeout_s=4 * 3600)
            produced = len(consume_all(bootstrap, out_topic, timeout_s=600))
            store = open_state(state)
            profiles = sum(1 for _ in store.scan(b"p/"))
            held = history_held(store)
            store.close()
            if profiles == 0 or produced == 0:
                raise RuntimeError(f"broken run: {profiles} profiles, {produced} changes")
            kept = "on" if held["history_events"] else "off"
            run = {
                "history": mode if args.history else kept,
                "journeys": "on" if args.journeys and mode == "on" else "off",
                "journey_sends": sends_written(Path(tmp) / f"sends-{name}"),
                "processes": processes,
                "workers": workers,
                "seconds": round(seconds, 2),
                "events_per_s": round(records / seconds),
                "ratio": round((records / seconds) / (records / ceiling_s), 3),
                "rss_mb": round(sum(peaks), 1),
                "rss_mb_per_process": peaks,
                "cpu_s_per_process": cpu,
                "cpu_s": round(sum(cpu), 1),
                "profiles": profiles,
                "audience_changes": produced,
                **held,
                **state_disk(state),
            }
            shutil.rmtree(state)  # measured; the next runs need the disk
            result.setdefault("runs", []).append(run)
        first = result["runs"][0]
        result.update(
            {
                k: first[k]
                for k in (
                    "events_per_s",
                    "ratio",
                    "rss_mb",
                    "profiles",
                    "audience_changes",
                    "seconds",
                )
            }
        )
        if args.history and {"on", "off"} <= set(args.history):
            events = sum(len(sources[name]) for name in ("web", "voice", "store"))
            result["history_cost"] = history_cost(result["runs"], records, events)
        if args.journeys and {"on", "off"} <= set(args.journeys):
            result["journey_cost"] = journey_cost(result["runs"], records)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
