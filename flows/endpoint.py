"""A webhook's HTTP client: kept-alive connections to one URL, a POST with retries, and the
lane a profile's changes keep to."""

from __future__ import annotations

import http.client
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from config.settings import http_url

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})

# A kept-alive connection the server has closed meanwhile fails on its next request with one of
# these, before the server saw anything: the request is sent again at once on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Post(NamedTuple):
    """What a webhook sink takes: one audience change or journey send, rendered."""

    profile: str  # picks the lane: a profile's posts keep to one, in order
    body: bytes
    id: str  # of the change or send: the `Idempotency-Key` header
    send: bool = False  # a journey send: posted once per id (`flows.delivered`)


# A `Post`; a `(profile id, body)` pair is an audience change (its id read from the body).
Item = Post | tuple[str, bytes]


def as_post(item: Item) -> Post:
    if isinstance(item, Post):
        return item
    profile, body = item
    try:
        post_id = str(orjson.loads(body)["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):  # no id: posted without the header
        post_id = ""
    return Post(profile, body, post_id)


@dataclass(frozen=True, slots=True)
class PostResult:
    ok: bool
    attempts: int
    problem: str = ""
    final: bool = False  # the endpoint answered no: sending it again would not change that
    given_up: bool = False  # stopped between attempts because the destination went down


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

    def _send(self, body: bytes, key: str) -> int:
        conn = self._connection()
        # The same key on every attempt and every re-delivery of one change or send: an
        # endpoint can tell a repeat from a new one.
        headers = {**self._headers, "Idempotency-Key": key} if key else self._headers
        conn.request("POST", self._path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        self._used = True
        if response.will_close:
            self.close()
        return response.status

    def post_once(self, body: bytes, key: str = "") -> int:
        """The HTTP status of one POST; raises OSError or HTTPException when there is none.
        `key`: its `Idempotency-Key` header (none if empty)."""
        try:
            try:
                return self._send(body, key)
            except _STALE:
                if not self._used:
                    raise
                self.close()  # closed by the server while idle: once more, on a new connection
                return self._send(body, key)
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def post(
        self,
        body: bytes,
        *,
        max_attempts: int,
        backoff_ms: int,
        key: str = "",
        sleep: Callable[[float], object] = time.sleep,
        give_up: Callable[[], bool] = lambda: False,
    ) -> PostResult:
        problem = ""
        for attempt in range(1, max_attempts + 1):
            try:
                status = self.post_once(body, key)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"connection failed: {type(exc).__name__}"
            else:
                if 200 <= status < 300:
                    return PostResult(True, attempt)
                problem = f"HTTP {status}"
                if status not in RETRYABLE:
                    return PostResult(False, attempt, problem, final=True)
            if attempt < max_attempts:
                sleep(backoff_ms * (2 ** (attempt - 1)) / 1000)
                if give_up():
                    return PostResult(False, attempt, problem, given_up=True)
        return PostResult(False, max_attempts, problem)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def lane_of(profile_id: str, lanes: int) -> int:
    """Stable across runs and processes, so a profile's changes keep one lane."""
    return zlib.crc32(profile_id.encode()) % lanes
