"""Throughput: the whole pipeline in replay mode (Kafka in -> audience changes out) next to the
ceiling, a bare loop that only consumes the same topics and parses each value with orjson.

    python -m benchmarks.throughput --profiles 100000 --events 500000 [--workers 1 2]
        [--processes 2]

Each run is a `cdp replay` over the same topics into a fresh state: one process per value of
`--workers` (that many worker threads), then a cluster per value of `--processes` (that many
processes of one worker each, `-i/-a`; they share the machine's cores with the broker). The
top-level numbers are the first run's. Before them the floor runs (`benchmarks.floor`, off with
`--no-floor`): the same pipeline with the engine taken out, one change out per record in, as
`floor_events_per_s`. Starts a local broker unless KAFKA_BOOTSTRAP_SERVERS is
set. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from benchmarks.common import (
    ROOT,
    bench_config,
    free_port,
    machine,
    run_cluster,
    run_id,
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
    args = parser.parse_args(argv)

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

        def run_config(name: str, **extra: Any) -> tuple[Path, str]:
            """The bench config for one run, with an output topic of its own: each run's
            changes are counted alone."""
            out_topic = f"{prefix}cdp.audience-changes-{name}"
            create_topics(bootstrap, [out_topic])
            path = bench_config(
                ROOT / "config" / "bench.yaml",
                Path(tmp) / f"bench-{name}.yaml",
                prefix,
                bootstrap,
                destinations=[{"name": "audiences", "kind": "kafka", "topic": out_topic}],
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
        for processes, workers in topologies:
            name = f"{processes}x{workers}"
            state = Path(tmp) / f"state-{name}"
            own, out_topic = run_config(
                name, identity={"feedback_topic": f"{prefix}feedback-{name}"}
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
            store.close()
            if profiles == 0 or produced == 0:
                raise RuntimeError(f"broken run: {profiles} profiles, {produced} changes")
            run = {
                "processes": processes,
                "workers": workers,
                "seconds": round(seconds, 2),
                "events_per_s": round(records / seconds),
                "ratio": round((records / seconds) / (records / ceiling_s), 3),
                "rss_mb": round(sum(peaks), 1),
                "rss_mb_per_process": peaks,
                "cpu_s_per_process": cpu,
                "profiles": profiles,
                "audience_changes": produced,
            }
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
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
