"""The journey sends a webhook destination has delivered, so each reaches its endpoint once.

A journey send stays in the engine's outbox until its sinks took it and is emitted again, with
the same id, after a crash (at-least-once into the sinks). A webhook endpoint cannot be asked
whether it has a message already, so the destination keeps the ids it delivered (answered 2xx)
and does not post one of them again. Audience changes do not use it: their consumers dedupe by
`id` (the `Idempotency-Key` header) and a change re-sent after a crash is harmless.

On disk, one RocksDB per destination and process, `STATE/delivered/<name>/` (through
`operators.store`; a process's workers share it, as they share the spool):
- `i/<id>` -> when it was delivered (epoch ms, ASCII digits);
- `t/<ms, 13 digits>/<id>` -> b"": the same by age, so pruning reads only what it removes.
Ids older than `dedup_window` are pruned when the ledger opens, and then every `PRUNE_EVERY_MS`
of sends (a worker that runs for weeks): a replay re-emits recent sends only (those of the
outbox), not weeks-old ones.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from operators.store import RocksStore, StoreError

_ID = b"i/"
_AGE = b"t/"
PRUNE_EVERY_MS = 3_600_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def age_key(at_ms: int, send_id: str) -> bytes:
    return b"%s%013d/%s" % (_AGE, at_ms, send_id.encode())


class Ledger:
    """Thread-safe: a process's workers and its spool thread share one."""

    def __init__(self, directory: Path, window_ms: int, now_ms: int | None = None) -> None:
        self.path = directory
        self.window_ms = window_ms
        try:
            self._store = RocksStore(directory)
        except StoreError as exc:  # its message speaks of the state store
            raise StoreError(f"the ledger of delivered journey sends {directory}: {exc}") from exc
        self._lock = threading.Lock()
        self._pruned_at = _now_ms() if now_ms is None else now_ms
        self.pruned = self.prune(self._pruned_at)

    def has(self, send_id: str) -> bool:
        with self._lock:
            return self._store.get(_ID + send_id.encode()) is not None

    def add(self, send_id: str, now_ms: int | None = None) -> None:
        """Delivered: written at once (RocksDB's write-ahead log, so a killed process keeps
        it; a crash of the machine may lose the last ones, which are then sent again)."""
        at = _now_ms() if now_ms is None else now_ms
        key = _ID + send_id.encode()
        with self._lock:
            old = self._store.get(key)
            changes: dict[bytes, bytes | None] = {key: b"%d" % at, age_key(at, send_id): b""}
            if old is not None:  # delivered again (not through this ledger): keep one age key
                changes[age_key(int(old), send_id)] = None
            self._store.write(changes)
            due = at - self._pruned_at >= min(PRUNE_EVERY_MS, self.window_ms)
            if due:
                self._pruned_at = at
        if due:
            self.pruned += self.prune(at)

    def prune(self, now_ms: int) -> int:
        """Forget the ids delivered more than `window_ms` before `now_ms`; how many."""
        end = age_key(max(now_ms - self.window_ms, 0), "")
        with self._lock:
            changes: dict[bytes, bytes | None] = {}
            for key, _ in self._store.scan(_AGE):
                if key >= end:
                    break
                changes[_ID + key.split(b"/", 2)[2]] = None
                changes[key] = None
            if changes:
                self._store.write(changes)
        return len(changes) // 2

    def close(self) -> None:
        with self._lock:
            self._store.close()
