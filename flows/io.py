"""Adapters between Bytewax and the outside: sources that yield `(Origin, bytes)` and sinks
that write bytes. No business logic lives here."""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    StatelessSinkPartition,
)

from flows import broker
from flows.producer import KafkaTopicSink, Message, ProducerPartition
from schemas.records import Origin

Raw = tuple[Origin, bytes]
# Set on SIGTERM/SIGINT: every source ends its input, so the flow drains, sinks flush and the
# run returns normally (a graceful stop is an end of input).
STOP = threading.Event()
PRIVACY_SOURCE = "$privacy"  # the privacy topic's messages (GDPR deletes), not a data source


class RawCounts:
    """What this process's input partitions read, and how many reached their end (several
    processes end a replay by comparing these with the work done, DESIGN §3)."""

    def __init__(self) -> None:
        self.read = 0
        self.dropped = 0  # dead letters and records before --from-timestamp
        self.parts_ended = 0

    def reset(self) -> None:
        self.read = self.dropped = self.parts_ended = 0


RAW = RawCounts()


@dataclass(frozen=True, slots=True)
class FileInput:
    source: str
    path: Path  # a file, or a glob pattern (`drops/crm-*.json`): every match, by name


def read_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """`(offset, raw)` for each record of a JSON-array or JSON-lines file (auto-detected).

    A JSON array yields one record per element (offset: its index); otherwise each non-blank
    line is a record (offset: its 0-based line number), so a bad line becomes a dead letter
    with its own position instead of failing the file.
    """
    data = path.read_bytes()
    if data.lstrip()[:1] == b"[":
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError:
            items = None
        if isinstance(items, list):
            for index, item in enumerate(items):
                yield index, orjson.dumps(item)
            return
    for number, line in enumerate(data.split(b"\n")):
        if line.strip():
            yield number, line.rstrip(b"\r")


def _is_glob(path: Path) -> bool:
    return any(c in str(path) for c in "*?[")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a source, and the input partition its records carry: 0 for a source's
    single named file, a stable number from the file's name for each match of a glob (so a
    new file, wherever it sorts, never shifts another file's positions)."""

    source: str
    path: Path
    partition: int

    @property
    def key(self) -> str:
        return f"{self.source}:{self.partition}"


def source_files(inputs: Sequence[FileInput]) -> list[SourceFile]:
    """The files to read, in the sources' order; a glob's matches in name order."""
    out: list[SourceFile] = []
    for item in inputs:
        if not _is_glob(item.path):
            out.append(SourceFile(item.source, item.path, 0))
            continue
        matches = sorted(p for p in item.path.parent.glob(item.path.name) if p.is_file())
        for match in matches:
            part = zlib.crc32(match.name.encode()) & 0x7FFF_FFFF
            out.append(SourceFile(item.source, match, part or 1))
    return out


# Resume state of the files partition: for each file (`SourceFile.key`), the offset of the
# last record read. A later replay reads what was appended and the files that are new.
FilePositions = dict[str, int]


class _FilesPartition(StatefulSourcePartition[Raw, FilePositions]):
    def __init__(self, inputs: Sequence[FileInput], resume: Any, batch: int):
        self._files = source_files(inputs)
        # An earlier version's state, `(file index, offset)`: read everything again (what was
        # applied is recognised by its offset and skipped).
        self._read: FilePositions = dict(resume) if isinstance(resume, dict) else {}
        self._index = 0
        self._batch = batch
        self._iter: Iterator[tuple[int, bytes]] | None = None

    def next_batch(self) -> list[Raw]:
        if STOP.is_set():
            raise StopIteration
        out: list[Raw] = []
        while len(out) < self._batch:
            if self._index >= len(self._files):
                if out:
                    return out
                raise StopIteration
            current = self._files[self._index]
            if self._iter is None:
                self._iter = read_records(current.path)
            key, last = current.key, self._read.get(current.key, -1)
            for offset, raw in self._iter:
                if offset <= last:
                    continue
                out.append((Origin(current.source, current.partition, offset), raw))
                self._read[key] = offset
                if len(out) >= self._batch:
                    return out
            self._index, self._iter = self._index + 1, None
        return out

    def snapshot(self) -> FilePositions:
        return dict(self._read)


class FilesSource(FixedPartitionedSource[Raw, FilePositions]):
    """The sources' files read one after the other, in the order given (one partition); a
    replay into the same state reads only what was appended since, and new files."""

    def __init__(self, inputs: Sequence[FileInput], batch_size: int = 1000) -> None:
        for item in inputs:
            if _is_glob(item.path):
                if not any(f.source == item.source for f in source_files([item])):
                    raise FileNotFoundError(f"source {item.source!r}: no file matches {item.path}")
            elif not item.path.is_file():
                raise FileNotFoundError(f"source {item.source!r}: no file at {item.path}")
        self._inputs = tuple(inputs)
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return ["files"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePositions | None
    ) -> _FilesPartition:
        return _FilesPartition(self._inputs, resume_state, self._batch)


class _Stoppable(StatefulSourcePartition[Any, Any]):
    """A source partition that ends when `STOP` is set, counted in `RAW`."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any], config: dict[str, str]) -> None:
        self._inner = inner
        self._ended = False
        self._health = broker.health_for(config)

    def next_batch(self) -> Iterable[Any]:
        if STOP.is_set():
            raise StopIteration
        try:
            batch = list(self._inner.next_batch())
        except StopIteration:
            if not self._ended:
                self._ended = True
                RAW.parts_ended += 1
            raise
        if batch:
            self._health.consumed()
        RAW.read += len(batch)
        return batch

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableKafkaSource(KafkaSource):
    """Bytewax's KafkaSource whose partitions end on `STOP`, whose clients report to the
    process's broker health (`flows.broker`) and which never creates a topic."""

    def __init__(self, config: dict[str, str], **kwargs: Any) -> None:
        super().__init__(add_config=config, **kwargs)
        self._plain = config

    def _hooked(self) -> None:
        # Added on the worker, not in the factory: the hooks hold locks and threads.
        full = {"bootstrap.servers": ",".join(self._brokers), **self._plain}
        self._add_config = {**self._plain, **broker.client_hooks(full)}

    def list_parts(self) -> list[str]:
        self._hooked()
        return super().list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Stoppable:  # type: ignore[override]
        self._hooked()
        full = {"bootstrap.servers": ",".join(self._brokers), **self._plain}
        return _Stoppable(super().build_part(step_id, for_part, resume_state), full)


def kafka_source(
    brokers: str,
    topics: Sequence[str],
    *,
    tail: bool,
    config: dict[str, str],
    batch_size: int = 1000,
) -> KafkaSource:
    # Without this, the metadata request of Bytewax's `list_parts` (an admin client, whose
    # default is true) creates a mistyped topic on brokers that allow it (tansu does).
    return StoppableKafkaSource(
        {**config, "allow.auto.create.topics": "false"},
        brokers=brokers.split(","),
        topics=list(topics),
        tail=tail,
        batch_size=batch_size,
    )


def kafka_raw(topic_to_source: dict[str, str], msg: KafkaSourceMessage[Any, Any]) -> Raw:
    assert msg.topic is not None and msg.partition is not None and msg.offset is not None
    origin = Origin(topic_to_source[msg.topic], msg.partition, msg.offset)
    return origin, msg.value if msg.value is not None else b""


def _cut_torn_line(path: Path) -> None:
    """A process killed in the middle of a write leaves a line without its end; appending
    after it would glue the next line to it. It goes: what it held was not yet acknowledged
    (its batch's snapshot never completed), so it is written again after the restart."""
    if not path.exists():
        return
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        step = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - step)
            handle.seek(start)
            at = handle.read(end - start).rfind(b"\n")
            if at >= 0:
                handle.truncate(start + at + 1)
                return
            end = start
        handle.truncate(0)


class _SharedFile:
    """One append handle per path per process, shared by the worker threads."""

    _lock = threading.Lock()
    _open: dict[Path, tuple[IO[bytes], threading.Lock]] = {}  # noqa: RUF012

    @classmethod
    def get(cls, path: Path) -> tuple[IO[bytes], threading.Lock]:
        with cls._lock:
            if path not in cls._open:
                path.parent.mkdir(parents=True, exist_ok=True)
                _cut_torn_line(path)
                cls._open[path] = (path.open("ab"), threading.Lock())
            return cls._open[path]

    @classmethod
    def close_all(cls) -> None:
        with cls._lock:
            for handle, _ in cls._open.values():
                handle.close()
            cls._open.clear()


class _LinesPartition(StatelessSinkPartition[bytes]):
    def __init__(self, path: Path) -> None:
        self._handle, self._lock = _SharedFile.get(path)

    def write_batch(self, items: list[bytes]) -> None:
        with self._lock:
            self._handle.write(b"".join(item + b"\n" for item in items))
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.flush()


class JsonLinesSink(DynamicSink[bytes]):
    """Appends one JSON document per line; flushed after every batch."""

    def __init__(self, path: Path) -> None:
        self._path = path.resolve()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LinesPartition:
        return _LinesPartition(self._path)


def close_files() -> None:
    _SharedFile.close_all()


def dead_letter_message(value: bytes) -> tuple[str, Message]:
    """For `kafka_sink`: dead letters go to its one partition (they are few)."""
    return ("0", (b"dead", value, None))


def kafka_sink(brokers: str, topic: str, config: dict[str, str]) -> KafkaTopicSink:
    """The dead letters' topic: the same at-least-once producer as the destinations."""
    return kafka_topic_sink(brokers, topic, config)


def kafka_topic_sink(brokers: str, topic: str, config: dict[str, str]) -> KafkaTopicSink:
    producer = {
        "linger.ms": "5",
        "enable.idempotence": "true",
        **config,
        "bootstrap.servers": brokers,
    }
    return KafkaTopicSink(producer, topic, STOP)


def keyed_message(key: str, value: bytes) -> Message:
    return (key.encode(), value, None)


def timed_message(key: str, value: bytes | None, read_ns: int) -> Message:
    return (key.encode(), value, read_ns)


def append_lines(path: Path) -> Callable[[list[bytes]], None]:
    """A writer that appends JSON lines to `path`, shared with any sink of the same file."""
    resolved = path.resolve()

    def write(items: list[bytes]) -> None:
        handle, lock = _SharedFile.get(resolved)
        with lock:
            handle.write(b"".join(item + b"\n" for item in items))
            handle.flush()

    return write


def produce_to(config: dict[str, str], topic: str) -> Callable[[list[bytes]], None]:
    """A writer that produces to a Kafka topic and returns once the broker has every item
    (the producer is made on first use); while the broker is away it waits, saying so."""
    holder: list[ProducerPartition] = []

    def write(items: list[bytes]) -> None:
        if not holder:
            idempotent = {"enable.idempotence": "true", **config}
            holder.append(ProducerPartition(idempotent, topic, None, STOP))
        holder[0].write_batch([(None, item, None) for item in items])
        holder[0].deliver_all()

    return write
