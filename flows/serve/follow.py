"""Reading the profile projection into the server's replica, on a thread of its own: a
JSON-lines file followed as it grows (like `tail -f`), or a Kafka topic read from its
beginning (assigned partitions, no consumer group, no commits: every replica reads all of it).
Each chunk read is applied in one atomic write with the position it was read to
(`operators.replica.apply_batch`), so a server on a kept store resumes where it was."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from flows import broker
from flows.serve.metrics import ServeMetrics
from operators import replica
from operators.store import Store

LOG = logging.getLogger("cdp.serve")
_IDLE_S = 0.02  # how long a follower sleeps at the end of the file: the freshness floor
_CHUNK = 1 << 20


class Follower:
    """What the endpoints and `/healthz` see of a follower."""

    def __init__(
        self, store: Store, metrics: ServeMetrics, source: str, position: dict[str, Any]
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.source = source  # "file <path>" or "topic <name>": for health and logs
        self.position = position  # `operators.replica.resume`
        self.caught_up = threading.Event()  # read to the end once
        self.applied = 0
        self.stop = threading.Event()
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._main, name="cdp-serve-follow", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            self.run()
        except Exception as exc:  # the thread's end must be seen in /healthz, not lost
            self.failure = f"{type(exc).__name__}: {exc}"
            LOG.exception("reading the profile projection (%s) failed", self.source)

    def run(self) -> None:
        raise NotImplementedError

    def apply(self, records: list[tuple[str | None, Any]]) -> None:
        if not records:
            return
        counts = replica.apply_batch(self.store, records, self.position)
        self.applied += counts["applied"]
        for outcome, count in counts.items():
            if count:
                self.metrics.documents.labels(outcome).inc(count)
        if counts["bad"]:
            LOG.warning("%d projection records were not documents (skipped)", counts["bad"])
        last = next((d for _, d in reversed(records) if isinstance(d, dict)), None)
        written = _epoch_s(last.get("updated_at")) if last else None
        if written is not None:
            self.metrics.lag.set(max(0.0, time.time() - written))


def _epoch_s(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not JSON"  # counted as bad by apply_document


class FileFollower(Follower):
    def __init__(
        self, path: Path, store: Store, metrics: ServeMetrics, position: dict[str, Any]
    ) -> None:
        super().__init__(store, metrics, f"file {path}", position)
        self.path = path

    def _open(self) -> Any:
        """The file, at the stored position if it is the same file (same inode, not shorter);
        else at its start."""
        handle = self.path.open("rb")
        stat = os.fstat(handle.fileno())
        offset = self.position.get("offset", 0)
        if self.position.get("inode") == stat.st_ino and stat.st_size >= offset:
            handle.seek(offset)
        self.position = {"source": self.source, "inode": stat.st_ino, "offset": handle.tell()}
        return handle

    def run(self) -> None:
        handle = None
        inode = None
        pending = b""
        while not self.stop.is_set():
            if handle is None:
                try:
                    handle = self._open()
                except FileNotFoundError:
                    self.caught_up.set()  # nothing written yet is nothing to wait for
                    self.stop.wait(_IDLE_S * 5)
                    continue
                inode, pending = self.position["inode"], b""
            chunk = handle.read(_CHUNK)
            if chunk:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()  # a line still being written
                self.position = {**self.position, "offset": handle.tell() - len(pending)}
                self.apply([(None, _parse(line)) for line in lines if line.strip()])
                continue
            self.caught_up.set()
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            # Replaced or truncated (a rewrite of the projection): read it again from the
            # start; the seq of each document keeps what is already newer.
            if now is None or now.st_ino != inode or now.st_size < handle.tell():
                handle.close()
                handle = None
                continue
            self.stop.wait(_IDLE_S)
        if handle is not None:
            handle.close()


class KafkaFollower(Follower):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        store: Store,
        metrics: ServeMetrics,
        position: dict[str, Any],
    ) -> None:
        super().__init__(store, metrics, f"topic {topic}", position)
        self.topic = topic
        self.config = {
            **config,
            **broker.client_hooks(config),
            "group.id": f"cdp-serve-{uuid.uuid4().hex[:12]}",  # required; never joined
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": "20",
        }

    def run(self) -> None:
        consumer = Consumer(self.config)
        try:
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            held: dict[str, int] = dict(self.position.get("partitions", {}))
            consumer.assign(
                [
                    TopicPartition(self.topic, p, held.get(str(p), OFFSET_BEGINNING))
                    for p in partitions
                ]
            )
            at_end: set[int] = set()
            while not self.stop.is_set():
                records: list[tuple[str | None, Any]] = []
                for msg in consumer.consume(1000, 0.05):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition() or 0)
                        continue
                    held[str(msg.partition())] = (msg.offset() or 0) + 1
                    key = msg.key()
                    value = msg.value()
                    document = None if value is None else _parse(value)
                    records.append((key.decode(errors="replace") if key else None, document))
                self.position = {"source": self.source, "partitions": dict(held)}
                self.apply(records)
                if not self.caught_up.is_set() and at_end.issuperset(partitions):
                    self.caught_up.set()
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer) -> list[int] | None:
        """The topic's partitions, once it exists (a server may start before the worker)."""
        while not self.stop.is_set():
            try:
                found = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            except Exception:  # the broker is not reachable yet: keep asking
                found = None
            if found is not None and found.error is None and found.partitions:
                return sorted(found.partitions)
            self.stop.wait(0.5)
        return None
