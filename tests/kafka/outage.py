"""A live worker and a broker behind a TCP proxy that the tests cut and restore (shared by the
outage tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import ROOT, read_jsonl
from tests.kafka_broker import consume_all, create_topics, produce
from tests.tcp_proxy import TcpProxy

CONFIG = """\
namespaces:
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
segments:
  - id: recent
    rule: 'count(event.eventType == "web.webpagedetails.pageViews", within="{window}") >= 1'
  - id: viewers
    rule: 'count(event.eventType == "web.webpagedetails.pageViews") >= 1'
destinations:
  - {{name: changes, kind: kafka, topic: {p}changes}}
  - {{name: file, kind: file, path: changes.jsonl}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
recovery: {{epoch_interval_ms: 500}}
state: {{dir: state}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_view(i: int, device: str, ts_ms: int | None = None) -> bytes:
    return orjson.dumps(
        {
            "_id": f"e{i}",
            "timestamp": ts_ms if ts_ms is not None else time.time_ns() // 1_000_000,
            "eventType": "web.webpagedetails.pageViews",
            "identityMap": {"ECID": [{"id": device}]},
        }
    )


@dataclass
class Worker:
    """A `cdp run` subprocess; its stderr and stdout go to `log`."""

    tmp: Path
    prefix: str
    bootstrap: str
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    @property
    def config(self) -> Path:
        return self.tmp / "cdp.yaml"

    @property
    def log(self) -> Path:
        return self.tmp / "worker.log"

    @property
    def file_changes(self) -> Path:
        return self.tmp / "changes.jsonl"

    def write_config(self, window: str = "10s") -> None:
        p = self.prefix
        create_topics(self.bootstrap, [f"{p}web", f"{p}changes", f"{p}dead"])
        self.config.write_text(CONFIG.format(p=p, bootstrap=self.bootstrap, window=window))

    def start(self, *args: str) -> None:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(self.metrics_port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(self.tmp),
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", *args, "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_lines(self) -> list[str]:
        if not self.log.exists():
            return []
        return self.log.read_text(errors="replace").splitlines()

    def metric(self, name: str) -> float | None:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        found = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + " ", name + "{"))
        ]
        return sum(found) if found else None  # summed over the labels

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the worker did not stop on SIGTERM: " + self.tail()) from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def produce(self, values: list[bytes]) -> None:
        produce(self.bootstrap, f"{self.prefix}web", values)

    def kafka_changes(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        values = consume_all(self.bootstrap, f"{self.prefix}changes", timeout_s=timeout_s)
        return [orjson.loads(v) for v in values]

    def file_rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file_changes)


def ids(changes: list[dict[str, Any]]) -> set[str]:
    return {str(c["id"]) for c in changes}


def wait_until(what: str, check: Any, seconds: float, worker: Worker | None = None) -> float:
    """Polls `check()` until true; returns how long it took."""
    started = time.monotonic()
    while not check():
        if worker is not None:
            assert worker.alive(), f"worker died while waiting for {what}:\n{worker.tail()}"
        assert time.monotonic() - started < seconds, f"no {what} within {seconds:.0f} s"
        time.sleep(0.5)
    return time.monotonic() - started


def outage_lines(lines: list[str]) -> list[str]:
    """Log lines about the broker (ours and librdkafka's)."""
    words = ("Kafka", "kafka", "broker", "rdkafka", "FAIL")
    return [line for line in lines if any(w in line for w in words)]


def during(proxy: TcpProxy, seconds: float, worker: Worker) -> Iterator[float]:
    """Cut the proxy for `seconds`, yielding the time cut every half second (asserting the
    worker stays alive); restores it at the end."""
    proxy.cut()
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            assert worker.alive(), f"worker died {elapsed:.0f} s into the outage:\n{worker.tail()}"
            yield elapsed
            time.sleep(0.5)
    finally:
        proxy.restore()
