"""Broker outages: a live worker keeps running, timers keep firing into a file destination, the
Kafka destination catches up after the broker is back, and the log says so once (issue #12).

Every client reaches the broker through a `TcpProxy` (bootstrap and advertised address), so
`proxy.cut()` is an outage for the worker; the tests' own clients wait until it is restored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import read_jsonl
from tests.kafka.outage import Worker, during, ids, outage_lines, page_view, wait_until
from tests.kafka_broker import LocalBroker, consume_all, create_topics, proxied_broker
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.kafka

DEVICES = 8


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[LocalBroker, TcpProxy]]:
    with proxied_broker() as pair:
        yield pair


@pytest.fixture
def worker(
    tmp_path: Path, proxied: tuple[LocalBroker, TcpProxy], topic_prefix: str
) -> Iterator[Worker]:
    _, proxy = proxied
    proxy.restore()
    w = Worker(tmp_path, topic_prefix, f"127.0.0.1:{proxy.port}")
    yield w
    proxy.restore()
    if w.alive():
        w.stop()


def outage(worker: Worker, proxy: TcpProxy, seconds: float) -> dict[str, float]:
    """A live worker with traffic before the cut; timers fall due during the outage. Returns
    what was measured; asserts that nothing was lost and the log stayed quiet."""
    worker.write_config(window="10s")
    worker.start("run")
    worker.produce([page_view(i, f"dev-{i}") for i in range(DEVICES)])
    # Every device entered both segments, on the file and on Kafka.
    wait_until("entries", lambda: len(worker.file_rows()) >= 2 * DEVICES, 90, worker)
    wait_until("entries on Kafka", lambda: len(worker.kafka_changes(2)) >= 2 * DEVICES, 60)
    # More views just before the cut: their devices' `recent` exits fall due during it.
    worker.produce([page_view(100 + i, f"late-{i}") for i in range(DEVICES)])
    wait_until("late entries", lambda: len(worker.file_rows()) >= 4 * DEVICES, 60, worker)
    lines_before = len(worker.log_lines())
    rows_at_cut = len(worker.file_rows())
    broker_up: list[float | None] = []
    file_during: list[int] = []
    pending: list[float | None] = []
    for elapsed in during(proxy, seconds, worker):
        if elapsed > 15 and len(broker_up) < 3:
            broker_up.append(worker.metric("cdp_broker_up"))
        if elapsed > seconds - 5 and not pending:
            pending.append(worker.metric("cdp_kafka_pending_messages"))
        file_during.append(len(worker.file_rows()))
    during_lines = worker.log_lines()[lines_before:]
    # Timers fired into the file while the broker was away: every device exited `recent`.
    assert file_during[-1] >= rows_at_cut + 2 * DEVICES, (rows_at_cut, file_during[-1])
    assert 0.0 in broker_up, broker_up
    assert pending and (pending[0] or 0) >= DEVICES, pending  # the exits wait for Kafka
    file_ids = ids(worker.file_rows())
    took = wait_until(
        "every change on Kafka",
        lambda: ids(worker.kafka_changes(3)) >= file_ids,
        120,
        worker,
    )
    wait_until("cdp_broker_up back to 1", lambda: worker.metric("cdp_broker_up") == 1.0, 30)
    after_lines = worker.log_lines()[lines_before:]
    about = outage_lines(after_lines)
    assert sum("broker unreachable" in line for line in about) == 1, "\n".join(about)
    assert sum("broker back" in line for line in about) == 1, "\n".join(about)
    assert len(about) <= 10, "\n".join(about)
    # And the flow resumed by itself: new traffic flows to both destinations.
    worker.produce([page_view(200, "after-outage")])
    wait_until(
        "a change after the outage",
        lambda: any(c["profile_id"] and "e200" in c["reason"] for c in worker.kafka_changes(2)),
        60,
        worker,
    )
    errors = worker.metric("cdp_broker_errors_total")
    assert errors is not None and errors > 0
    assert worker.stop() == 0, worker.tail()
    kafka = worker.kafka_changes()
    assert ids(kafka) == ids(worker.file_rows())
    return {
        "log_lines_during": len(during_lines),
        "log_lines_about_broker": len(about),
        "file_rows_during": file_during[-1] - rows_at_cut,
        "delivery_after_restore_s": took,
        "broker_errors": errors,
    }


def test_worker_survives_a_45s_outage(
    worker: Worker, proxied: tuple[LocalBroker, TcpProxy]
) -> None:
    measured = outage(worker, proxied[1], 45)
    print(measured)


@pytest.mark.slow
def test_worker_survives_a_6min_outage(
    worker: Worker, proxied: tuple[LocalBroker, TcpProxy]
) -> None:
    measured = outage(worker, proxied[1], 360)
    print(measured)


def run_until_entries_reach_kafka(worker: Worker) -> None:
    """A live worker with a 5 s window: every device's entries written to the file and to
    Kafka (its exits come 5 s later, by timer)."""
    worker.write_config(window="5s")
    worker.start("run")
    worker.produce([page_view(i, f"dev-{i}") for i in range(DEVICES)])
    wait_until("entries", lambda: len(worker.file_rows()) >= 2 * DEVICES, 90, worker)
    wait_until("entries on Kafka", lambda: len(worker.kafka_changes(2)) >= 2 * DEVICES, 60)


def test_a_kill_during_an_outage_loses_nothing(
    worker: Worker, proxied: tuple[LocalBroker, TcpProxy]
) -> None:
    """Changes made while the broker is away live only in the Kafka sink's snapshot (and the
    engine's outbox): a SIGKILL then a restart after the outage still delivers every one."""
    proxy = proxied[1]
    run_until_entries_reach_kafka(worker)
    proxy.cut()
    try:
        # The `recent` exits fire into the file while Kafka is away; a few epochs later the
        # worker dies.
        wait_until("exits in the file", lambda: len(worker.file_rows()) >= 3 * DEVICES, 60, worker)
        time.sleep(3)
        assert worker.proc is not None
        worker.proc.kill()
        worker.proc.wait()
    finally:
        proxy.restore()
    emitted = ids(worker.file_rows())
    on_kafka = ids(worker.kafka_changes(3))
    assert not emitted <= on_kafka  # the exits had not reached Kafka when it died
    worker.start("run")
    took = wait_until(
        "every change on Kafka after the restart",
        lambda: ids(worker.kafka_changes(3)) >= emitted,
        120,
        worker,
    )
    print({"delivered_after_restart_s": took})
    assert worker.stop() == 0, worker.tail()


REPLAY_CONFIG = """\
namespaces:
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, path: events.jsonl}}
segments:
  - id: recent
    rule: 'count(event.eventType == "web.webpagedetails.pageViews", within="1m") >= 1'
destinations:
  - {{name: changes, kind: kafka, topic: {p}changes}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
state: {{dir: state}}
"""


def test_a_files_replay_waits_out_an_outage(
    worker: Worker, proxied: tuple[LocalBroker, TcpProxy]
) -> None:
    proxy = proxied[1]
    p = worker.prefix
    create_topics(worker.bootstrap, [f"{p}changes", f"{p}dead"])
    worker.config.write_text(REPLAY_CONFIG.format(p=p, bootstrap=worker.bootstrap))
    start = 1_700_000_000_000
    rows = [page_view(i, f"dev-{i % 50}", start + i * 10_000) for i in range(300)]
    (worker.tmp / "events.jsonl").write_bytes(b"\n".join([*rows, b"not json"]) + b"\n")
    out = worker.tmp / "all.jsonl"
    proxy.cut()
    try:
        worker.start(
            "replay", "--files", "--quiet", "--audience-out", str(out),
            "--state-dir", str(worker.tmp / "state"),
        )  # fmt: skip
        for _ in range(40):  # ~20 s
            time.sleep(0.5)
            assert worker.alive(), worker.tail()
    finally:
        proxy.restore()
    assert worker.proc is not None
    code = worker.proc.wait(timeout=120)
    assert code == 0, worker.tail()
    every = read_jsonl(out)
    assert len(every) > 50
    kafka = worker.kafka_changes()
    assert ids(kafka) == ids(every)
    dead = consume_all(worker.bootstrap, f"{p}dead", expected=1)
    assert [orjson.loads(d)["reason"].split(":")[0] for d in dead] == ["not JSON"]
    about = outage_lines(worker.log_lines())
    assert sum("broker unreachable" in line for line in about) == 1, "\n".join(about)
    assert len(about) <= 10, "\n".join(about)


def test_a_stop_during_an_outage_keeps_the_rest_for_the_next_start(
    worker: Worker, proxied: tuple[LocalBroker, TcpProxy]
) -> None:
    """SIGTERM while the broker is away: the worker waits a bounded time for it, then exits
    cleanly; what Kafka had not taken is sent by the next start."""
    proxy = proxied[1]
    run_until_entries_reach_kafka(worker)
    proxy.cut()
    try:
        wait_until("exits in the file", lambda: len(worker.file_rows()) >= 3 * DEVICES, 60, worker)
        started = time.monotonic()
        assert worker.stop(timeout=60) == 0, worker.tail()
        stopped_in = time.monotonic() - started
    finally:
        proxy.restore()
    assert stopped_in < 40, stopped_in
    assert "sent at the next start" in worker.tail()
    emitted = ids(worker.file_rows())
    worker.start("run")
    wait_until("every change on Kafka", lambda: ids(worker.kafka_changes(3)) >= emitted, 120)
    assert worker.stop() == 0, worker.tail()
