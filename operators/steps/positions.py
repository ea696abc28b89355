"""Input positions and event time: which input offsets each Bytewax key has applied (a record
re-delivered after a crash is skipped), each input partition's event time, and the watermark.

Keys:
| key | value | what |
| --- | --- | --- |
| `o/KKKK/SOURCE/PARTITION` | int | highest input offset applied by Bytewax key KKKK |
| `meta/watermark` | int | the event-time watermark (epoch ms) |
| `meta/partitions` | JSON | the highest event time seen per input partition |
| `meta/graph-watermark`, `meta/graph-partitions` | | the identity step's own (several processes) |
"""

from __future__ import annotations

from functools import lru_cache

from operators.store import Store, Txn, decode
from schemas.records import Record

WATERMARK_KEY = b"meta/watermark"
PARTITIONS_KEY = b"meta/partitions"
GRAPH_WATERMARK_KEY = b"meta/graph-watermark"
GRAPH_PARTITIONS_KEY = b"meta/graph-partitions"


@lru_cache(maxsize=1 << 12)  # one per Bytewax key and input partition, built every record
def offset_key(key: int, source: str, partition: int) -> bytes:
    return f"o/{key:04d}/{source}/{partition}".encode()


@lru_cache(maxsize=1 << 12)
def partition_name(source: str, partition: int) -> str:
    return f"{source}/{partition}"


class _PartitionRun:
    """Which records of one partition (by read order) have been applied in this run."""

    __slots__ = ("next_seq", "pending", "safe_ms")

    def __init__(self) -> None:
        self.next_seq = 1
        self.pending: dict[int, int | None] = {}
        self.safe_ms: int | None = None

    def applied(self, seq: int, ts_ms: int | None) -> tuple[int | None, int | None]:
        """Mark `seq` applied. Returns the highest event time over the applied prefix up to
        `seq` (unchanged while earlier records wait) and over the whole applied prefix."""
        self.pending[seq] = ts_ms
        at_record = self.safe_ms
        while self.next_seq in self.pending:
            ts = self.pending.pop(self.next_seq)
            if ts is not None and (self.safe_ms is None or ts > self.safe_ms):
                self.safe_ms = ts
            if self.next_seq == seq:
                at_record = self.safe_ms
            self.next_seq += 1
        return at_record, self.safe_ms


class Positions:
    """`live`: event time is the wall clock less the allowed lateness, records or not; a
    replay's event time is the records' own (the lowest partition's latest)."""

    def __init__(
        self,
        store: Store,
        *,
        graph: bool,
        live: bool,
        lateness_ms: int,
        profile_sources: frozenset[str] = frozenset(),
        expected: frozenset[str] = frozenset(),
    ) -> None:
        self._watermark_key = GRAPH_WATERMARK_KEY if graph else WATERMARK_KEY
        self._partitions_key = GRAPH_PARTITIONS_KEY if graph else PARTITIONS_KEY
        self.live = live
        self.lateness_ms = lateness_ms
        raw = store.get(self._watermark_key)
        self.max_event_ms: int | None = None if raw is None else int(raw)
        parts = store.get(self._partitions_key)
        self._partition_max: dict[str, int] = {} if parts is None else decode(parts)
        # A state from a version where profile records moved event time: their partitions
        # would hold the lowest partition's time back forever, as they never advance now.
        for part in [p for p in self._partition_max if p.rsplit("/", 1)[0] in profile_sources]:
            del self._partition_max[part]
        # A replay's event partitions with records to read (`SOURCE/PARTITION`): event time
        # waits until each has delivered one, else the first partition read would drag it to
        # its own end and another's records would all arrive late (a journey's waits run
        # before the events that should have stopped them). The end of input releases it.
        self._unseen = set(expected) - set(self._partition_max)
        self._runs: dict[str, _PartitionRun] = {}
        self.offsets: dict[str, int] = {}  # last offset applied per partition (progress)

    @property
    def now_ms(self) -> int:
        """Event time: the watermark, less the allowed lateness (0 before any event)."""
        return 0 if self.max_event_ms is None else self.max_event_ms - self.lateness_ms

    def observe(self, record: Record) -> tuple[str, int | None, int | None]:
        """Event time per input partition, as `(partition, at_record, after)`.

        A partition's event time is the highest event time among the records read before
        every one not yet applied (records carry their read order, `seq`): with several
        workers, records of one partition may be applied out of read order, and event time
        must not run ahead of a record still waiting. `at_record` is the partition's event
        time up to and including this record (what it is evaluated at), `after` includes the
        records read after it that were already applied.
        """
        part = partition_name(record.origin.source, record.origin.partition)
        # Only events move event time. A profile record's time (its `timestamp_field`, or
        # when its message was written) orders its attributes and stamps its changes, but a
        # CRM export written today must not drag a replay of last year's events to today.
        ts = record.ts_ms if record.kind == "event" else None
        if not record.seq:
            return part, ts, ts
        run = self._runs.setdefault(part, _PartitionRun())
        return (part, *run.applied(record.seq, ts))

    def advance(self, part: str, ts_ms: int | None) -> bool:
        """Raise a partition's event time; the watermark is the lowest over the partitions
        (once every expected one has delivered), so a replay never treats events as late
        because partitions are read at different speeds. Returns True when the watermark
        moved (never live: the wall clock moves it, so no record's clock can drag everyone's
        time)."""
        if ts_ms is None or ts_ms <= self._partition_max.get(part, -1):
            return False
        self._partition_max[part] = ts_ms
        if self.live:
            return False
        self._unseen.discard(part)
        if self._unseen:
            return False  # a partition expected to deliver has not yet
        low = min(self._partition_max.values())
        if self.max_event_ms is not None and low <= self.max_event_ms:
            return False
        self.max_event_ms = low
        return True

    def move_to(self, event_ms: int) -> bool:
        """Event time moves forward to `event_ms` (the wall clock, or the identity step's
        event time); True when it moved."""
        if self.max_event_ms is not None and event_ms <= self.max_event_ms:
            return False
        self.max_event_ms = event_ms
        return True

    def to_last_event(self) -> int | None:
        """End of input: event time jumps to the last event of any partition (None: none)."""
        if not self._partition_max:
            return None
        last = max(self._partition_max.values())
        if self.max_event_ms is None or last > self.max_event_ms:
            self.max_event_ms = last
        return last

    def first_time(self, txn: Txn, key: int, source: str, partition: int, offset: int) -> bool:
        """Whether this key applies input `offset` of (source, partition) for the first time
        (and records it, in the same WriteBatch as what it changes). Inputs reach a key in
        offset order, so the highest applied offset is enough."""
        stored = offset_key(key, source, partition)
        applied = txn.get_json(stored)
        if applied is not None and offset <= applied:
            return False
        txn.put_json(stored, offset)
        return True

    def read(self, part: str, offset: int) -> None:
        self.offsets[part] = max(self.offsets.get(part, -1), offset)

    def save(self, txn: Txn) -> None:
        if self.max_event_ms is not None:
            txn.put(self._watermark_key, str(self.max_event_ms).encode())
            txn.put_json(self._partitions_key, dict(self._partition_max))
