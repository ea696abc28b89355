"""Time in a live worker (`cdp run`, one worker, real broker), as issue #12 found it broken:
timers starved by steady traffic stamped in the past, and one record from a wrong clock
moving event time to 2099 for good."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from operators.steps.positions import WATERMARK_KEY
from operators.store import open_store
from tests.kafka_broker import consume_all, create_topics

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces: [{{name: ECID}}]
sources:
  - {{name: web, kind: event, topic: {p}web}}
  - {{name: app, kind: event, topic: {p}app}}
segments:
  - id: abandoned
    rule: 'absent(event.eventType == "buy", after=event.eventType == "cart", within="20s")'
  - id: mixed
    rule: 'count(event.eventType == "view") == count(event.eventType == "view", within="1d")'
destinations:
  - {{name: out, kind: file, path: changes.jsonl}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
state: {{dir: state}}
"""
ROOT = Path(__file__).resolve().parents[2]


def start_worker(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(tmp_path / "cdp.yaml"), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> str:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    return worker.stdout.read().decode() if worker.stdout else ""


def event(eid: str, kind: str, ts_ms: int | str, device: str) -> bytes:
    return orjson.dumps(
        {
            "_id": eid,
            "eventType": kind,
            "timestamp": ts_ms,
            "identityMap": {"ECID": [{"id": device}]},
        }
    )


def changes(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "changes.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def setup(
    tmp_path: Path, bootstrap: str, p: str, app_partitions: int = 1, web_partitions: int = 1
) -> None:
    create_topics(bootstrap, [f"{p}dead"])
    create_topics(bootstrap, [f"{p}web"], partitions=web_partitions)
    create_topics(bootstrap, [f"{p}app"], partitions=app_partitions)
    (tmp_path / "cdp.yaml").write_text(CONFIG.format(p=p, bootstrap=bootstrap))


def wait_ready(producer: Producer, p: str, tmp_path: Path) -> None:
    """The worker reads and applies (a first view makes `mixed` enter for its device)."""
    deadline = time.monotonic() + 60
    while not changes(tmp_path):
        producer.produce(f"{p}web", event("warm", "view", wall_ms(), "warm-up"))
        producer.flush(5)
        assert time.monotonic() < deadline, "the worker never applied a record"
        time.sleep(0.5)


@pytest.mark.parametrize("workers", [1, 2])
def test_timers_fire_on_time_under_steady_traffic_stamped_in_the_past(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, workers: int
) -> None:
    """~100 events/s, every one stamped 15 s back (apps upload in batches), on one partition
    and one worker (and on two of each): each cart's abandonment fires within a second of its
    due time, while the traffic flows. Before the fix the tick was pushed back after every
    batch and the timers waited for a pause in the traffic (15-91 s late)."""
    p = topic_prefix
    setup(tmp_path, kafka_bootstrap, p, web_partitions=workers)
    worker = start_worker(tmp_path, "--workers", str(workers))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 2})
    try:
        wait_ready(producer, p, tmp_path)
        carts: dict[str, int] = {}
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 22:
            now = wall_ms()
            for _ in range(10):  # 10 events every 0.1 s
                n += 1
                producer.produce(f"{p}web", event(f"v{n}", "view", now - 15_000, f"dev-{n % 500}"))
            if n % 100 == 0 and len(carts) < 8:
                device = f"cart-{len(carts)}"
                carts[device] = now - 15_000
                producer.produce(f"{p}web", event(f"c{n}", "cart", now - 15_000, device))
            producer.poll(0)
            time.sleep(0.1)
        producer.flush(10)
        assert worker.poll() is None
        deadline = time.monotonic() + 10
        while True:
            fired = {
                c["identities"]["ECID"][0]: c
                for c in changes(tmp_path)
                if c["segment_id"] == "abandoned" and c["status"] == "entered"
            }
            if set(carts) <= set(fired) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        output = stop_worker(worker)
    assert set(carts) <= set(fired), output[-3000:]
    lateness = []
    for device, cart_ts in carts.items():
        change = fired[device]
        assert change["reason"] == "timer"
        assert ms(change["event_time"]) == cart_ts + 20_000  # exactly at the window's close
        lateness.append(ms(change["emitted_at"]) - ms(change["event_time"]))
    # The target is 1 s; a 2-core CI machine shared with the broker gets a margin.
    print(f"timer lateness under load, ms: {sorted(lateness)}")
    assert max(lateness) < 2_000, lateness
    # Every event's change carries its event as the reason: none waits for a tick.
    mixed = [c for c in changes(tmp_path) if c["segment_id"] == "mixed"]
    assert mixed and all(c["reason"].startswith("event:") for c in mixed)
    assert all(c["status"] == "entered" for c in mixed)  # no flapping exits


@pytest.mark.parametrize("partitions", [1, 2])
def test_a_record_from_2099_is_a_dead_letter_and_moves_no_time(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, partitions: int
) -> None:
    """A page view stamped 2099 on one partition (web) and on every partition of another
    source (app): a dead letter each, with its reason; pending carts are abandoned when
    their 20 s are up, not at once."""
    p = topic_prefix
    setup(tmp_path, kafka_bootstrap, p, app_partitions=partitions)
    worker = start_worker(tmp_path)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 2})
    try:
        wait_ready(producer, p, tmp_path)
        cart_at = wall_ms()
        producer.produce(f"{p}web", event("cart-1", "cart", cart_at, "shopper"))
        producer.flush(5)
        time.sleep(1)
        future = "2099-01-01T00:00:00Z"
        producer.produce(f"{p}web", event("bad-web", "view", future, "clock-wrong"))
        for part in range(partitions):
            producer.produce(f"{p}app", event(f"bad-{part}", "view", future, "x"), partition=part)
        producer.produce(f"{p}web", event("secs", "view", cart_at // 1000, "seconds-device"))
        producer.flush(5)
        dead = [
            orjson.loads(v)
            for v in consume_all(kafka_bootstrap, f"{p}dead", expected=partitions + 2, timeout_s=20)
        ]
        time.sleep(2)
        early = [c for c in changes(tmp_path) if c["segment_id"] == "abandoned"]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            abandoned = [c for c in changes(tmp_path) if c["segment_id"] == "abandoned"]
            if abandoned:
                break
            time.sleep(0.5)
    finally:
        output = stop_worker(worker)
    reasons = sorted(d["reason"].split(":")[0] for d in dead)
    assert reasons.count("timestamp in the future") == partitions + 1, reasons
    assert any("implausible in milliseconds" in r for r in reasons), reasons
    assert early == [], "a record from 2099 fired the cart's timer early"
    assert len(abandoned) == 1, output[-3000:]
    assert ms(abandoned[0]["event_time"]) == cart_at + 20_000
    assert ms(abandoned[0]["emitted_at"]) - (cart_at + 20_000) < 2_000
    # The state's event time is the wall clock's: a restart is accepted as it is.
    probe = subprocess.run(
        [sys.executable, "-m", "flows.cli", "export", "--config", str(tmp_path / "cdp.yaml")],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"clock-wrong" not in probe.stdout


def test_a_state_poisoned_by_an_earlier_version_is_refused_with_the_way_out(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    p = topic_prefix
    setup(tmp_path, kafka_bootstrap, p)
    store = open_store(tmp_path / "state")
    store.write({WATERMARK_KEY: b"4070908800000"})  # what a 2099 record left behind
    store.close()
    refused = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(tmp_path / "cdp.yaml")],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert b"2099-01-01" in refused.stderr and b"--reset-event-time" in refused.stderr
    worker = start_worker(tmp_path, "--reset-event-time")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 2})
    try:
        wait_ready(producer, p, tmp_path)
        cart_at = wall_ms()
        producer.produce(f"{p}web", event("cart-1", "cart", cart_at, "shopper"))
        producer.flush(5)
        time.sleep(3)
        assert not [c for c in changes(tmp_path) if c["segment_id"] == "abandoned"]
    finally:
        stop_worker(worker)


def test_a_pending_timer_survives_sigkill(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The worker is killed with a cart's timer pending and comes back after it was due: the
    abandonment is emitted once, at the window's exact close; a cart added while the worker
    was down fires at its own time."""
    p = topic_prefix
    setup(tmp_path, kafka_bootstrap, p)
    worker = start_worker(tmp_path)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 2})
    try:
        wait_ready(producer, p, tmp_path)
        first = wall_ms() - 15_000  # due in 5 s
        producer.produce(f"{p}web", event("cart-a", "cart", first, "shopper-a"))
        producer.flush(5)
        deadline = time.monotonic() + 20
        while not any(c["identities"]["ECID"] == ["shopper-a"] for c in changes(tmp_path)):
            assert time.monotonic() < deadline, "the cart was never applied"
            time.sleep(0.2)
        time.sleep(1.5)  # a recovery snapshot covers the cart (epochs of 1 s)
        worker.kill()
        worker.wait()
        assert not [c for c in changes(tmp_path) if c["segment_id"] == "abandoned"]
        second = wall_ms() - 5_000  # due in 15 s, sent while the worker is down
        producer.produce(f"{p}web", event("cart-b", "cart", second, "shopper-b"))
        producer.flush(5)
        time.sleep(6)  # the first cart's timer comes due while nobody runs
        worker = start_worker(tmp_path)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            abandoned = [c for c in changes(tmp_path) if c["segment_id"] == "abandoned"]
            if len({c["id"] for c in abandoned}) >= 2:
                break
            time.sleep(0.5)
    finally:
        output = stop_worker(worker)
    by_id = {c["id"]: c for c in abandoned}
    assert len(by_id) == 2, output[-3000:]
    due = sorted((c["identities"]["ECID"][0], ms(c["event_time"])) for c in by_id.values())
    assert due == [("shopper-a", first + 20_000), ("shopper-b", second + 20_000)]
    assert all(c["reason"] == "timer" and c["status"] == "entered" for c in by_id.values())
