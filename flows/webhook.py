"""Webhook destination: one HTTP POST of JSON per audience change.

Retries connection errors, 429 and 5xx with exponential backoff; after the last attempt the
change goes to the dead letters with the reason, and the flow goes on. Posting is synchronous
inside the sink, so a slow endpoint slows the worker instead of growing a queue.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from config.settings import DestinationSettings
from schemas.records import DeadLetter, Origin

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class PostResult:
    ok: bool
    attempts: int
    problem: str = ""


def post_with_retries(
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    max_attempts: int,
    backoff_ms: int,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> PostResult:
    problem = ""
    for attempt in range(1, max_attempts + 1):
        request = urllib.request.Request(  # noqa: S310 - the URL comes from the operator's config
            url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                response.read()
                return PostResult(True, attempt)
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if exc.code not in RETRYABLE:
                return PostResult(False, attempt, problem)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = f"connection failed: {type(reason).__name__}"
        if attempt < max_attempts:
            sleep(backoff_ms * (2 ** (attempt - 1)) / 1000)
    return PostResult(False, max_attempts, problem)


class _WebhookPartition(StatelessSinkPartition[bytes]):
    def __init__(self, dest: DestinationSettings, dead: Callable[[list[bytes]], None]) -> None:
        self._dest = dest
        self._dead = dead

    def write_batch(self, items: list[bytes]) -> None:
        failed: list[bytes] = []
        dest = self._dest
        assert dest.url is not None
        for index, body in enumerate(items):
            result = post_with_retries(
                dest.url,
                body,
                headers=dest.headers,
                max_attempts=dest.max_attempts,
                backoff_ms=dest.backoff_ms,
                timeout_s=dest.timeout_s,
            )
            if not result.ok:
                reason = f"webhook {dest.name}: {result.problem} after {result.attempts} attempts"
                letter = DeadLetter(Origin(f"destination:{dest.name}", 0, index), body, reason)
                failed.append(letter.to_json())
        if failed:
            self._dead(failed)


class WebhookSink(DynamicSink[bytes]):
    def __init__(self, dest: DestinationSettings, dead: Callable[[list[bytes]], None]) -> None:
        self._dest = dest
        self._dead = dead

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WebhookPartition:
        return _WebhookPartition(self._dest, self._dead)
