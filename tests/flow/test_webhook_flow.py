"""A replay with a webhook destination: a real HTTP server on loopback, slow enough that the
changes go out over several connections at once, receives every change exactly as the audience
stream has it, each profile's in the order they were made, with one and two workers."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from benchmarks.generator import generate, write_files
from tests.helpers import ROOT, alternate, read_jsonl, run_cli


class Receiver:
    """Records each POSTed body in arrival order and the most requests in flight at once."""

    def __init__(self, delay_s: float) -> None:
        self.bodies: list[bytes] = []
        self.in_flight = self.peak = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                time.sleep(delay_s)
                with lock:
                    outer.in_flight -= 1
                    outer.bodies.append(body)  # answered: delivered, in this order
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/changes"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(delay_s=0.002)
    yield server
    server.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_webhook_gets_every_change_in_order(
    tmp_path: Path, receiver: Receiver, workers: int
) -> None:
    write_files(generate(150, 1500, seed=9), tmp_path, junk=False)
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["destinations"] = [
        {"name": "hook", "kind": "webhook", "url": receiver.url, "concurrency": 4}
    ]
    path = tmp_path / "cdp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "changes.jsonl"
    code = run_cli(
        "replay", "--config", path, "--files", "--state-dir", tmp_path / "state",
        "--workers", str(workers), "--audience-out", out, "--quiet",
    )  # fmt: skip
    assert code == 0

    expected = read_jsonl(out)
    received = [orjson.loads(b) for b in receiver.bodies]
    assert len(expected) > 300
    key = lambda c: (c["id"], c["status"], c["event_time"])  # noqa: E731
    assert sorted(map(key, received)) == sorted(map(key, expected))  # each once
    assert alternate(received, in_order=True)  # each profile's changes in order
    assert 1 < receiver.peak <= 4 * workers
    assert read_jsonl(tmp_path / "dead-letters.jsonl") == []
