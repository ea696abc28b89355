"""What keeps a failing webhook destination from holding up the others.

`Breaker`: after `down_after` deliveries in a row failed, the destination is down (and up again
after the first one that goes through). `Spool`: the changes a destination has not taken yet, on
disk in the order they came, until they are delivered; held by one process at a time.

On disk, in the spool directory (`STATE/spool/`):
- `<name>.jsonl`: one change a line, `{"id", "profile", "reason", "body"}` (and `"send": true`
  for a journey send; a line without it is an audience change), appended and
  flushed as they come (`sync` makes them durable before the sink's `write_batch` returns);
- `<name>.done`: the ids delivered (or refused and dead-lettered) since, one a line, so a
  change is sent once even when delivery stops half-way; both files are emptied when every
  change is delivered;
- `<name>.lock`: `flock`ed by the process that holds the spool (a worker, or `cdp redeliver`).

A change is identified by its `id`: one already in the spool is not added again, and one
delivered from it is not sent again (until the spool is emptied).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import orjson


class SpoolBusy(Exception):
    """Another process holds this spool."""


@dataclass(frozen=True, slots=True)
class Spooled:
    id: str
    profile: str
    body: bytes
    reason: str
    send: bool = False  # a journey send (posted once per id), not an audience change

    def to_line(self) -> bytes:
        doc: dict[str, object] = {"id": self.id, "profile": self.profile, "reason": self.reason}
        if self.send:  # only then: the lines of a spool written before sends read the same
            doc["send"] = True
        return orjson.dumps({**doc, "body": orjson.Fragment(self.body)}) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Spooled:
        doc = orjson.loads(line)
        body = orjson.dumps(doc["body"])
        return cls(doc["id"], doc["profile"], body, doc["reason"], bool(doc.get("send")))


@dataclass
class Redelivery:
    """What one delivery of a spool did (counted by its lanes' threads)."""

    delivered: int = 0
    refused: int = 0  # answered no for good: sent to the dead letters
    already: int = 0  # journey sends in the ledger: delivered before, not posted again
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, refused: bool = False, already: bool = False) -> None:  # lanes' threads
        with self._lock:
            if already:
                self.already += 1
            elif refused:
                self.refused += 1
            else:
                self.delivered += 1


def change_id(body: bytes) -> str:
    """The `id` of a rendered audience change."""
    return str(orjson.loads(body)["id"])


class Breaker:
    """Counts deliveries that failed in a row; `record` says when the destination goes down
    (the `down_after`-th failure) and when it comes back (the first success after). A
    refused change (the endpoint answered no) is a success here: the endpoint is up."""

    def __init__(self, down_after: int) -> None:
        self._down_after = down_after
        self._failures = 0
        self._lock = threading.Lock()
        self.down = threading.Event()  # set while down: waits in a backoff end at once

    def record(self, ok: bool) -> Literal["down", "up"] | None:
        with self._lock:
            if ok:
                self._failures = 0
                if self.down.is_set():
                    self.down.clear()
                    return "up"
                return None
            self._failures += 1
            if self._failures >= self._down_after and not self.down.is_set():
                self.down.set()
                return "down"
            return None


class Spool:
    """One destination's spool (see the module's doc). Thread-safe: a process's workers and
    its re-delivery thread share it."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        self._done_path = directory / f"{name}.done"
        self._lock_file = (directory / f"{name}.lock").open("ab")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolBusy(
                f"the spool {self.path} is held by another process (a running worker "
                "re-delivers it by itself when the destination is back)"
            ) from None
        self._mutex = threading.Lock()
        self._done = {line.decode() for line in _complete_lines(self._done_path)}
        self._ids: set[str] = set()  # every id in the spool file, delivered or not
        self._pending: dict[str, int] = {}  # profile -> changes not yet delivered
        self.count = 0  # changes not yet delivered
        self.delivered_before = 0  # in the file and delivered already when it was opened
        for line in _complete_lines(self.path):
            entry = Spooled.from_line(line)
            if entry.id in self._ids:
                continue
            self._ids.add(entry.id)
            if entry.id in self._done:
                self.delivered_before += 1
            else:
                self._add(entry.profile)
        self._out: IO[bytes] = self.path.open("ab", buffering=0)
        self._unsynced = False
        self._done_out: IO[bytes] = self._done_path.open("ab", buffering=0)

    def _add(self, profile: str) -> None:
        self._pending[profile] = self._pending.get(profile, 0) + 1
        self.count += 1

    def holds(self, profile: str) -> bool:
        return profile in self._pending

    def put(
        self,
        profile: str,
        body: bytes,
        reason: str,
        *,
        force: bool,
        id: str | None = None,
        send: bool = False,
    ) -> bool:
        """Keep this change in the spool if `force` or its profile has changes waiting here
        (a profile's changes must not overtake each other); True if it is in the spool or
        was delivered from it (a change sent again after a restart), so it must not be sent
        now. `id`: the change's or send's (read from `body` when not given). The line is
        written, not yet synced: see `sync`."""
        with self._mutex:
            if not force and profile not in self._pending:
                return bool(self._done) and (id or change_id(body)) in self._done
            entry = Spooled(id or change_id(body), profile, body, reason, send)
            if entry.id in self._ids:
                return True
            self._out.write(entry.to_line())
            self._unsynced = True
            self._ids.add(entry.id)
            self._add(profile)
            return True

    def sync(self) -> None:
        """What was put is on disk (a crash after this loses none of it). The lines are
        written unbuffered: a killed process loses none anyway; this is for the machine."""
        with self._mutex:
            if self._unsynced:
                os.fsync(self._out.fileno())
                self._unsynced = False

    def read(self, offset: int, limit: int) -> tuple[list[Spooled], int]:
        """Up to `limit` changes not yet delivered, in spool order, from byte `offset` on;
        and the offset to read on from."""
        out: list[Spooled] = []
        with self._mutex, self.path.open("rb") as spool:
            spool.seek(offset)
            while len(out) < limit:
                line = spool.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                entry = Spooled.from_line(line)
                if entry.id not in self._done:
                    out.append(entry)
        return out, offset

    def settle(self, entry: Spooled) -> None:
        """This change was delivered (or refused for good): it is not sent again. Written
        unbuffered, so a killed process keeps it; `os.fsync` at `compact` or `close`."""
        with self._mutex:
            if entry.id in self._done:
                return
            self._done.add(entry.id)
            self._done_out.write(entry.id.encode() + b"\n")
            left = self._pending.get(entry.profile, 0) - 1
            if left > 0:
                self._pending[entry.profile] = left
            else:
                self._pending.pop(entry.profile, None)
            self.count -= 1

    def compact(self) -> None:
        """Empty both files when every change is delivered (the spool first: a crash between
        leaves ids of changes no longer there, which is harmless)."""
        with self._mutex:
            if self.count or not self._ids:
                return
            os.ftruncate(self._out.fileno(), 0)
            os.fsync(self._out.fileno())
            os.ftruncate(self._done_out.fileno(), 0)
            os.fsync(self._done_out.fileno())
            self._ids.clear()
            self._done.clear()

    def close(self) -> None:
        with self._mutex:
            for out in (self._out, self._done_out):
                os.fsync(out.fileno())
                out.close()
            self._lock_file.close()  # releases the lock


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The whole lines of a file, read as they come; a last line cut short by a crash is cut
    off the file once all are read (it was never synced, so the batch it was part of had not
    been written: the flow's recovery sends it again)."""
    try:
        f = path.open("r+b")
    except FileNotFoundError:
        return
    with f:
        end = 0
        for line in f:
            if not line.endswith(b"\n"):
                break
            end += len(line)
            if line.strip():
                yield line[:-1]
        f.truncate(end)
