"""Destination rendering, and the webhook client against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from config.settings import DestinationSettings
from flows.webhook import WebhookSink, post_with_retries
from operators.destinations import render
from schemas.records import AudienceChange

CHANGE = AudienceChange(
    id="c1",
    segment_id="gold",
    status="entered",
    profile_id="p_1",
    identities={"Email": ["a@example.com"], "ECID": ["e1", "e2"], "Phone": ["+1555"]},
    event_time_ms=1597104000000,
    emitted_at_ms=1597104000123,
    reason="event:x",
    sequence=1,
)


def test_render_selects_segments_identities_and_hashes() -> None:
    dest = DestinationSettings(
        name="ads",
        kind="file",
        path=Path("x"),
        segments=("gold",),
        identities=("Email", "Phone"),
        hash_identities=("Email",),
    )
    doc = orjson.loads(render(CHANGE, dest) or b"")
    assert doc["identities"] == {
        "Email": [hashlib.sha256(b"a@example.com").hexdigest()],
        "Phone": ["+1555"],
    }
    assert (
        doc["event_time"] == "2020-08-11T00:00:00Z"
        and doc["emitted_at"] == "2020-08-11T00:00:00.123Z"
    )
    other = DestinationSettings(name="ads", kind="file", path=Path("x"), segments=("silver",))
    assert render(CHANGE, other) is None


class Server:
    """Answers each POST with the next status of a script (then 200), recording bodies."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.bodies: list[bytes] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(body)
                status = outer.script.pop(0) if outer.script else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(getattr(request, "param", []))
    yield srv
    srv.close()


@pytest.mark.parametrize("server", [[500, 503]], indirect=True)
def test_retries_then_succeeds(server: Server) -> None:
    sleeps: list[float] = []
    result = post_with_retries(
        server.url,
        b'{"a":1}',
        headers={},
        max_attempts=5,
        backoff_ms=100,
        timeout_s=2,
        sleep=sleeps.append,
    )
    assert result.ok and result.attempts == 3
    assert sleeps == [0.1, 0.2]
    assert server.bodies == [b'{"a":1}'] * 3


@pytest.mark.parametrize("server", [[400]], indirect=True)
def test_client_errors_are_not_retried(server: Server) -> None:
    result = post_with_retries(
        server.url, b"{}", headers={}, max_attempts=5, backoff_ms=0, timeout_s=2
    )
    assert not result.ok and result.attempts == 1 and result.problem == "HTTP 400"


def test_unreachable_endpoint_gives_up() -> None:
    result = post_with_retries(
        "http://127.0.0.1:9/none", b"{}", headers={}, max_attempts=2, backoff_ms=0, timeout_s=1
    )
    assert not result.ok and "connection failed" in result.problem


@pytest.mark.parametrize("server", [[500] * 3], indirect=True)
def test_sink_sends_dead_letter_after_last_attempt(server: Server) -> None:
    dead: list[bytes] = []
    dest = DestinationSettings(
        name="crm-hook", kind="webhook", url=server.url, max_attempts=2, backoff_ms=0
    )
    part = WebhookSink(dest, dead.extend).build("w", 0, 1)
    part.write_batch([b'{"n":1}', b'{"n":2}'])
    # 1st: 500, 500 -> dead letter; 2nd: 500, then 200.
    assert len(server.bodies) == 4
    assert len(dead) == 1
    letter = orjson.loads(dead[0])
    assert letter["reason"] == "webhook crm-hook: HTTP 500 after 2 attempts"
    assert letter["source"] == "destination:crm-hook"
