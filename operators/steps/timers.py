"""Timers: when each profile must be evaluated again with no new record (the next moment one
of its windowed segments can flip). The profile's own `timer` field is the truth; the keys
below let a restarted worker find them, and the heap holds them in order in memory.

Keys:
| key | value | what |
| --- | --- | --- |
| `t/TTTTTTTTTTTTT/ID` | empty | re-evaluate the profile of canonical ID at event time T |
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from operators.store import Store, Txn
from schemas.records import Identity, identity_str, parse_identity

PREFIX = b"t/"


def timer_key(ts_ms: int, canonical: Identity) -> bytes:
    return f"t/{ts_ms:013d}/{identity_str(canonical)}".encode()


def parse_timer_key(key: bytes) -> tuple[int, Identity]:
    _, ts, ident = key.decode().split("/", 2)
    return int(ts), parse_identity(ident)


class Timers:
    """`held`: this engine holds timers (the identity step of several processes holds none)."""

    def __init__(self, store: Store, *, held: bool = True) -> None:
        self._heap: list[tuple[int, str, str]] = [  # (time, namespace, value)
            (ts, *canonical)
            for ts, canonical in (parse_timer_key(k) for k, _ in store.scan(PREFIX))
            if held
        ]
        heapq.heapify(self._heap)

    def set(self, txn: Txn, canonical: Identity, old: int | None, new: int | None) -> None:
        """A profile's timer moves from `old` to `new` (None: none)."""
        if old is not None:
            txn.delete(timer_key(old, canonical))
        if new is not None:
            txn.put(timer_key(new, canonical), b"")
            heapq.heappush(self._heap, (new, *canonical))

    def due(self, upto_ms: int) -> Iterator[tuple[int, Identity]]:
        """Timers at or before `upto_ms`, earliest first, taken off the heap (some may have
        been superseded since: the caller checks the profile's `timer`)."""
        heap = self._heap
        while heap and heap[0][0] <= upto_ms:
            ts, namespace, value = heapq.heappop(heap)
            yield ts, (namespace, value)

    def next_ms(self) -> int | None:
        """Event time of the earliest timer held (it may have been superseded since)."""
        return self._heap[0][0] if self._heap else None

    @staticmethod
    def fired(txn: Txn, ts_ms: int, canonical: Identity) -> None:
        txn.delete(timer_key(ts_ms, canonical))
