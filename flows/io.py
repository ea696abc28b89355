"""Adapters between Bytewax and the outside: sources that yield `(Origin, bytes)` and sinks
that write bytes. No business logic lives here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import KafkaError, Producer

from flows import broker
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
    path: Path


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


class _FilesPartition(StatefulSourcePartition[Raw, tuple[int, int]]):
    def __init__(self, inputs: Sequence[FileInput], resume: tuple[int, int] | None, batch: int):
        self._inputs = inputs
        self._file, self._skip = resume or (0, -1)
        self._batch = batch
        self._iter: Iterator[tuple[int, bytes]] | None = None

    def next_batch(self) -> list[Raw]:
        if STOP.is_set():
            raise StopIteration
        out: list[Raw] = []
        while len(out) < self._batch:
            if self._file >= len(self._inputs):
                if out:
                    return out
                raise StopIteration
            current = self._inputs[self._file]
            if self._iter is None:
                self._iter = read_records(current.path)
            for offset, raw in self._iter:
                if offset <= self._skip:
                    continue
                out.append((Origin(current.source, 0, offset), raw))
                self._skip = offset
                if len(out) >= self._batch:
                    return out
            self._file, self._skip, self._iter = self._file + 1, -1, None
        return out

    def snapshot(self) -> tuple[int, int]:
        return (self._file, self._skip)


class FilesSource(FixedPartitionedSource[Raw, tuple[int, int]]):
    """The sources' files read one after the other, in the order given (one partition)."""

    def __init__(self, inputs: Sequence[FileInput], batch_size: int = 1000) -> None:
        for item in inputs:
            if not item.path.is_file():
                raise FileNotFoundError(f"source {item.source!r}: no file at {item.path}")
        self._inputs = tuple(inputs)
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return ["files"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
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


class _SharedFile:
    """One append handle per path per process, shared by the worker threads."""

    _lock = threading.Lock()
    _open: dict[Path, tuple[IO[bytes], threading.Lock]] = {}  # noqa: RUF012

    @classmethod
    def get(cls, path: Path) -> tuple[IO[bytes], threading.Lock]:
        with cls._lock:
            if path not in cls._open:
                path.parent.mkdir(parents=True, exist_ok=True)
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


# What the pipeline's Kafka sinks take: key, value, and the wall-clock time the causing record
# was read (None: no latency headers). A plain tuple: messages cross workers, and Bytewax
# pickles what crosses.
Message = tuple[bytes | None, bytes, int | None]


class _ProducerPartition(StatefulSinkPartition[Message, list[Message]]):
    """Produces without waiting for the broker; its snapshot is the messages the broker has
    not acknowledged yet.

    Bytewax stores that snapshot with the epoch, so every message emitted up to a durable epoch
    is at the broker or in the recovery store (at-least-once; later ones are emitted again
    from the engine's outbox), and a partition resumed from a snapshot produces them again.
    librdkafka retries without end (`message.timeout.ms` 0). At the end of an epoch it waits
    a bounded time for deliveries (a healthy broker acknowledges in milliseconds, so the
    snapshot is empty) and not at all while the broker is known to be down: the worker goes on,
    timers fire and other destinations keep receiving changes. Memory is bounded: above
    `MAX_PENDING` unacknowledged messages, or when librdkafka's queue is full, it waits."""

    FLUSH_S = 5.0  # the longest wait at the end of an epoch while the broker is up
    MAX_PENDING = 20_000  # more unacknowledged: wait (snapshots and memory stay bounded)
    STOP_WAIT_S = 10.0  # a stop (SIGTERM) during an outage: what is left is in the snapshot

    def __init__(self, config: dict[str, str], topic: str, resume: list[Message] | None) -> None:
        self._health = broker.health_for(config)
        # At-least-once: a message is never given up on locally, whatever the config says.
        self._producer = Producer(
            {**config, **broker.client_hooks(config), "message.timeout.ms": "0"}
        )
        self._topic = topic
        self._pending: dict[int, Message] = {}
        self._next = 0
        self._retry: list[int] = []
        self._failed: list[str] = []
        if resume:
            self.write_batch(resume)

    def _delivered(self, n: int, err: Any, _msg: Any) -> None:
        if err is None:
            self._pending.pop(n, None)
            self._health.acknowledged()
        elif err.retriable() or err.code() in _RETRY_CODES:
            self._retry.append(n)
        else:  # the broker refuses it (too large, not authorised...): an operator must act
            self._failed.append(str(err))

    def _send(self, n: int, item: Message) -> None:
        key, value, read_ns = item
        headers = None if read_ns is None else _latency_headers(read_ns)
        on_delivery = partial(self._delivered, n)
        while True:
            try:
                self._producer.produce(
                    self._topic, value, key, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # the local queue is full: let the broker catch up
                self._producer.poll(0.1)
                self._waiting("the producer's queue is full")

    def write_batch(self, items: list[Message]) -> None:
        for item in items:
            n = self._next
            self._next += 1
            self._pending[n] = item
            self._send(n, item)
        self._producer.poll(0)
        self._resend()

    def _resend(self) -> None:
        while self._retry:
            retry, self._retry = self._retry, []
            for n in retry:
                if n in self._pending:
                    self._send(n, self._pending[n])
            self._producer.poll(0)

    def _waiting(self, why: str) -> None:
        held = self._health.limit.admit(f"waiting:{self._topic}", time.monotonic())
        if held is not None:
            broker.LOG.warning(
                "Kafka sink of topic %s waits: %s (%d messages not yet acknowledged)",
                self._topic,
                why,
                len(self._pending),
            )

    def _check(self) -> None:
        self._health.pending[id(self)] = len(self._pending)
        if self._failed:
            errors, self._failed = self._failed, []
            raise RuntimeError(
                f"Kafka topic {self._topic!r} refused {len(errors)} messages: {errors[0]} "
                "(they are sent again at the next start)"
            )

    def snapshot(self) -> list[Message]:
        self._resend()
        if self._pending:
            self._producer.flush(self.FLUSH_S if self._health.up else 0.0)
            self._resend()
        while len(self._pending) > self.MAX_PENDING:
            self._waiting(f"over {self.MAX_PENDING} messages are waiting for the broker")
            self._producer.flush(1.0)
            self._resend()
        self._check()
        return [self._pending[n] for n in sorted(self._pending)]

    def close(self) -> None:
        """End of input: deliver everything, waiting for the broker as long as it takes; after a
        stop was asked, at most `STOP_WAIT_S` (the rest is in the last snapshot)."""
        self.deliver_all(stop_wait_s=self.STOP_WAIT_S)

    def deliver_all(self, stop_wait_s: float | None = None) -> None:
        """Wait until the broker has acknowledged every message (with `stop_wait_s`: at most
        that long once a stop was asked)."""
        deadline = time.monotonic() + (stop_wait_s or 0.0)
        while self._pending and not self._failed:
            if stop_wait_s is not None and STOP.is_set() and time.monotonic() > deadline:
                broker.LOG.warning(
                    "stopping with %d messages for topic %s not acknowledged: they are in "
                    "the recovery store and are sent at the next start",
                    len(self._pending),
                    self._topic,
                )
                break
            self._producer.flush(1.0)
            self._resend()
            if self._pending:
                self._waiting("the broker has not acknowledged everything yet")
        self._check()


# Delivery errors to retry (librdkafka marks most transient ones retriable itself).
_RETRY_CODES = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
    }
)


class KafkaTopicSink(FixedPartitionedSink[Message, list[Message]]):
    """One topic; a single sink partition, whose snapshot holds what the broker has not
    acknowledged (see `_ProducerPartition`)."""

    def __init__(self, config: dict[str, str], topic: str) -> None:
        self._config = config
        self._topic = topic

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[Message] | None
    ) -> _ProducerPartition:
        return _ProducerPartition(self._config, self._topic, resume_state)


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
    return KafkaTopicSink(producer, topic)


def keyed_message(key: str, value: bytes) -> Message:
    return (key.encode(), value, None)


def timed_message(key: str, value: bytes, read_ns: int) -> Message:
    return (key.encode(), value, read_ns)


def _latency_headers(read_ns: int) -> list[tuple[str, str | bytes | None]]:
    """Headers `cdp-read-ns` (the causing record was read) and `cdp-out-ns` (handed to the
    producer), wall-clock nanoseconds: the pipeline's own share of the latency."""
    return [("cdp-read-ns", str(read_ns).encode()), ("cdp-out-ns", str(time.time_ns()).encode())]


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
    holder: list[_ProducerPartition] = []

    def write(items: list[bytes]) -> None:
        if not holder:
            holder.append(_ProducerPartition({"enable.idempotence": "true", **config}, topic, None))
        holder[0].write_batch([(None, item, None) for item in items])
        holder[0].deliver_all()

    return write
