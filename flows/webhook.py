"""Webhook destination: one HTTP POST of JSON per audience change.

Changes are posted over `concurrency` lanes at once, each a kept-alive connection; a profile's
changes always take the same lane, one after the other, so they arrive in the order they were
made. Retries connection errors, 408/425/429 and 5xx with exponential backoff (holding up only
that lane); after the last attempt the change goes to the dead letters with the reason, and the
flow goes on. A batch is written before the sink returns, so a slow endpoint slows the worker
instead of growing a queue: what waits in memory is one batch.
"""

from __future__ import annotations

import http.client
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from config.settings import DestinationSettings, http_url
from schemas.records import DeadLetter, Origin

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})

# A kept-alive connection the server has closed meanwhile fails on its next request with one of
# these, before the server saw anything: the request is sent again at once on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

Item = tuple[str, bytes]  # (profile id: picks the lane, JSON body)


@dataclass(frozen=True, slots=True)
class PostResult:
    ok: bool
    attempts: int
    problem: str = ""


class Endpoint:
    """One connection to a webhook URL, kept alive between requests (not thread-safe: a lane
    has its own)."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        parts = http_url(url)
        assert parts.hostname is not None  # checked by http_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", **headers}
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # the connection has answered a request (it may since have closed)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self._timeout)
            self._used = False
        return self._conn

    def _send(self, body: bytes) -> int:
        conn = self._connection()
        conn.request("POST", self._path, body=body, headers=self._headers)
        response = conn.getresponse()
        response.read()
        self._used = True
        if response.will_close:
            self.close()
        return response.status

    def post_once(self, body: bytes) -> int:
        """The HTTP status of one POST; raises OSError or HTTPException when there is none."""
        try:
            try:
                return self._send(body)
            except _STALE:
                if not self._used:
                    raise
                self.close()  # closed by the server while idle: once more, on a new connection
                return self._send(body)
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def post(
        self,
        body: bytes,
        *,
        max_attempts: int,
        backoff_ms: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> PostResult:
        problem = ""
        for attempt in range(1, max_attempts + 1):
            try:
                status = self.post_once(body)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"connection failed: {type(exc).__name__}"
            else:
                if 200 <= status < 300:
                    return PostResult(True, attempt)
                problem = f"HTTP {status}"
                if status not in RETRYABLE:
                    return PostResult(False, attempt, problem)
            if attempt < max_attempts:
                sleep(backoff_ms * (2 ** (attempt - 1)) / 1000)
        return PostResult(False, max_attempts, problem)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def lane_of(profile_id: str, lanes: int) -> int:
    """Stable across runs and processes, so a profile's changes keep one lane."""
    return zlib.crc32(profile_id.encode()) % lanes


class _WebhookPartition(StatelessSinkPartition[Item]):
    def __init__(self, dest: DestinationSettings, dead: Callable[[list[bytes]], None]) -> None:
        assert dest.url is not None
        self._dest = dest
        self._dead = dead
        self._lanes = [
            Endpoint(dest.url, dest.headers, dest.timeout_s) for _ in range(dest.concurrency)
        ]
        self._pool = ThreadPoolExecutor(dest.concurrency, thread_name_prefix=f"hook-{dest.name}")

    def write_batch(self, items: list[Item]) -> None:
        work: list[list[tuple[int, bytes]]] = [[] for _ in self._lanes]
        for index, (profile_id, body) in enumerate(items):
            work[lane_of(profile_id, len(work))].append((index, body))
        running = [
            self._pool.submit(self._post_all, self._lanes[lane], bodies)
            for lane, bodies in enumerate(work)
            if bodies
        ]
        failed = sorted(letter for task in running for letter in task.result())
        if failed:
            self._dead([letter for _, letter in failed])

    def _post_all(
        self, lane: Endpoint, bodies: Sequence[tuple[int, bytes]]
    ) -> list[tuple[int, bytes]]:
        """One lane's share of a batch, in order; the dead letters, by place in the batch."""
        dest = self._dest
        failed: list[tuple[int, bytes]] = []
        for index, body in bodies:
            result = lane.post(body, max_attempts=dest.max_attempts, backoff_ms=dest.backoff_ms)
            if not result.ok:
                reason = f"webhook {dest.name}: {result.problem} after {result.attempts} attempts"
                letter = DeadLetter(Origin(f"destination:{dest.name}", 0, index), body, reason)
                failed.append((index, letter.to_json()))
        return failed

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for lane in self._lanes:
            lane.close()


class WebhookSink(DynamicSink[Item]):
    """Takes `(profile id, JSON body)` pairs."""

    def __init__(self, dest: DestinationSettings, dead: Callable[[list[bytes]], None]) -> None:
        self._dest = dest
        self._dead = dead

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WebhookPartition:
        return _WebhookPartition(self._dest, self._dead)
