"""Latency: a live worker (`cdp run`) under a fixed event rate; event produced -> audience
change consumed, p50/p99. In the same run: the broker's own round trip (a bare loop that
consumes the input topic and produces each record to another topic, at the same rate) and the
pipeline's own share (record read -> change handed to the producer, from the change's headers).

Timers under load: every event is stamped `--stamp-lag` seconds in the past (apps upload in
batches), and one in 20 comes with a cart whose abandonment (20 s after it) fires by timer
while the traffic flows; `timer_lateness_*` is how long after its due time each fired.

    python -m benchmarks.latency --rate 2000 --seconds 30

Starts a local broker unless KAFKA_BOOTSTRAP_SERVERS is set. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from benchmarks.common import ROOT, PeakRss, machine, run_id
from operators.identity import profile_id
from tests.kafka_broker import broker_from_env, create_topics

CONFIG = """\
namespaces: [{{name: ECID}}]
sources: [{{name: web, kind: event, topic: {p}web}}]
segments:
  - {{id: pinged, rule: 'exists(event.eventType == "bench.ping")'}}
  - id: abandoned
    rule: 'absent(event.eventType == "buy", after=event.eventType == "cart", within="{window}s")'
destinations: [{{name: out, kind: kafka, topic: {p}changes}}]
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
"""
FAST = {"fetch.wait.max.ms": "10", "fetch.min.bytes": "1"}
# Producers batch for up to 5 ms (the pipeline's own producer does the same): one request per
# message is more than the test broker sustains at a few thousand messages a second.
PRODUCE = {"linger.ms": "5"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Collector(threading.Thread):
    """Consumes a topic from its end and records, per message, what `on_message` returns."""

    def __init__(self, bootstrap: str, topic: str, on_message: Callable[[Any], None]) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"lat-{topic}",
                "enable.auto.commit": "false",
                **FAST,
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        self.on_message = on_message
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(500, 0.002):
                if msg.error() is None:
                    self.on_message(msg)
        self.consumer.close()


def paced(rate: int, seconds: float, send: Callable[[int], None]) -> int:
    """Call `send(i)` `rate` times a second for `seconds`; returns how many were sent."""
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return total


def event(i: int, tag: str, kind: str = "bench.ping", lag_ms: int = 0) -> bytes:
    return orjson.dumps(
        {
            "_id": f"{tag}{i}",
            "timestamp": time.time_ns() // 1_000_000 - lag_ms,
            "eventType": kind,
            "identityMap": {"ECID": [{"id": f"{tag}-{i}"}]},
        }
    )


CART_EVERY = 20


def broker_round_trip(bootstrap: str, prefix: str, rate: int, seconds: float) -> list[float]:
    """Produce -> consume -> produce -> consume, with no pipeline in between."""
    src, dst = f"{prefix}rt-in", f"{prefix}rt-out"
    create_topics(bootstrap, [src, dst])
    sent: dict[bytes, int] = {}
    got: list[float] = []
    relay_out = Producer({"bootstrap.servers": bootstrap, **PRODUCE})

    def relay(msg: Any) -> None:
        relay_out.produce(dst, msg.value(), key=msg.key())
        relay_out.poll(0)

    def measure(msg: Any) -> None:
        at = sent.get(msg.key())
        if at is not None:
            got.append((time.monotonic_ns() - at) / 1e6)

    relay_in, sink = Collector(bootstrap, src, relay), Collector(bootstrap, dst, measure)
    relay_in.start()
    sink.start()
    time.sleep(1.0)
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCE})

    def send(i: int) -> None:
        key = f"r{i}".encode()
        sent[key] = time.monotonic_ns()
        producer.produce(src, event(i, "r"), key=key)
        producer.poll(0)

    total = paced(rate, seconds, send)
    producer.flush(10)
    deadline = time.monotonic() + 30
    while len(got) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    for thread in (relay_in, sink):
        thread.stop.set()
        thread.join()
    relay_out.flush(5)
    return got


def pipeline(
    bootstrap: str, prefix: str, rate: int, seconds: float, tmp: Path, *, lag_s: float
) -> dict[str, Any]:
    create_topics(bootstrap, [f"{prefix}web", f"{prefix}changes", f"{prefix}dead"])
    config = tmp / "lat.yaml"
    window_s = int(lag_s) + 5  # the cart is due 5 s after it was sent
    config.write_text(CONFIG.format(p=prefix, bootstrap=bootstrap, window=window_s))
    lag_ms = int(lag_s * 1000)
    env = {**os.environ, "CDP_STATE__DIR": str(tmp / "state")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    rss = PeakRss(worker.pid)
    sent: dict[str, int] = {}
    end_to_end: list[float] = []
    inside: list[float] = []
    carts: dict[str, int] = {}  # cart id -> wall-clock ns its abandonment is due
    late: list[float] = []

    def measure(msg: Any) -> None:
        change = orjson.loads(msg.value())
        if change["segment_id"] == "abandoned":
            due = carts.get(change["profile_id"])
            if due is not None and change["reason"] == "timer":
                late.append((time.time_ns() - due) / 1e6)
            return
        at = sent.get(change["reason"].removeprefix("event:"))
        if at is None or change["status"] != "entered":
            return
        end_to_end.append((time.time_ns() - at) / 1e6)
        headers = dict(msg.headers() or [])
        read_ns, out_ns = int(headers.get("cdp-read-ns", 0)), int(headers.get("cdp-out-ns", 0))
        if read_ns and out_ns:
            inside.append((out_ns - read_ns) / 1e6)

    sink = Collector(bootstrap, f"{prefix}changes", measure)
    sink.start()
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCE})
    try:
        # Warm up until the worker answers.
        deadline = time.monotonic() + 60
        i = 0
        while not end_to_end:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the worker did not start:\n"
                    + (worker.stderr.read().decode() if worker.stderr else "")
                )
            sent[f"w{i}"] = time.time_ns()
            producer.produce(f"{prefix}web", event(i, "w"))
            producer.flush(5)
            i += 1
            time.sleep(0.5)
        time.sleep(1.0)
        end_to_end.clear()
        inside.clear()

        def send(n: int) -> None:
            sent[f"p{n}"] = now = time.time_ns()
            producer.produce(f"{prefix}web", event(n, "p", lag_ms=lag_ms))
            if n % CART_EVERY == 0:
                carts[profile_id(("ECID", f"c-{n}"))] = now - lag_ms * 1_000_000 + window_s * 10**9
                producer.produce(f"{prefix}web", event(n, "c", "cart", lag_ms))
            producer.poll(0)

        total = paced(rate, seconds, send)
        producer.flush(10)
        deadline = time.monotonic() + 30
        while len(end_to_end) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + window_s + 10
        while len(late) < len(carts) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sink.stop.set()
        sink.join()
        worker.terminate()
        worker.wait(30)
        peak = rss.stop()
    return {
        "events": total,
        "received": len(end_to_end),
        "end_to_end": end_to_end,
        "inside": inside,
        "rss_mb": peak,
        "carts": len(carts),
        "timer_late": late,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--stamp-lag", type=float, default=15, help="events are stamped this many seconds back"
    )
    args = parser.parse_args(argv)
    prefix = run_id()
    with broker_from_env() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        broker = broker_round_trip(bootstrap, prefix, args.rate, args.seconds)
        run = pipeline(bootstrap, prefix, args.rate, args.seconds, Path(tmp), lag_s=args.stamp_lag)
    if run["received"] < 0.99 * run["events"] or len(broker) < 0.99 * run["events"]:
        raise SystemExit(
            f"lost records: {run['received']}/{run['events']} changes, {len(broker)} relayed"
        )
    if len(run["timer_late"]) < run["carts"]:
        raise SystemExit(f"timers missing: {len(run['timer_late'])} of {run['carts']} fired")
    e2e, inside, late = run["end_to_end"], run["inside"], run["timer_late"]
    result = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "rate": args.rate,
        "seconds": args.seconds,
        "events": run["events"],
        "p50_ms": percentile(e2e, 0.5),
        "p99_ms": percentile(e2e, 0.99),
        "broker_p50_ms": percentile(broker, 0.5),
        "broker_p99_ms": percentile(broker, 0.99),
        "pipeline_p50_ms": percentile(inside, 0.5),
        "pipeline_p99_ms": percentile(inside, 0.99),
        "pipeline_mean_ms": round(statistics.fmean(inside), 2),
        "stamp_lag_s": args.stamp_lag,
        "timers": len(late),
        "timer_lateness_p50_ms": percentile(late, 0.5),
        "timer_lateness_p99_ms": percentile(late, 0.99),
        "timer_lateness_max_ms": round(max(late), 2),
        "rss_mb": run["rss_mb"],
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
