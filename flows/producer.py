"""The Kafka sinks' producer: at-least-once without holding up the worker while the broker is
away (issue #12). See `ProducerPartition`."""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, Producer

from flows import broker

# What the pipeline's Kafka sinks take: key, value, and the wall-clock time the causing record
# was read (None: no latency headers). A plain tuple: messages cross workers, and Bytewax
# pickles what crosses. A value None is a tombstone (a forgotten profile of the projection).
Message = tuple[bytes | None, bytes | None, int | None]


class ProducerPartition(StatefulSinkPartition[Message, list[Message]]):
    """Produces without waiting for the broker; its snapshot is the messages the broker has
    not acknowledged yet.

    Bytewax stores that snapshot with the epoch, so every message emitted up to a durable epoch
    is at the broker or in the recovery store (at-least-once; later ones are emitted again
    from the engine's outbox), and a partition resumed from a snapshot produces them again.
    librdkafka retries without end (`message.timeout.ms` 0). At the end of an epoch it waits
    a bounded time for deliveries (a healthy broker acknowledges in milliseconds, so the
    snapshot is empty) and not at all while the broker is suspected or known to be down: the
    worker goes on, timers fire and other destinations keep receiving changes. Memory is
    bounded: above `MAX_PENDING` unacknowledged messages, or when librdkafka's queue is full,
    it waits."""

    FLUSH_S = 5.0  # the longest wait at the end of an epoch while the broker is up
    MAX_PENDING = 20_000  # more unacknowledged: wait (snapshots and memory stay bounded)
    STOP_WAIT_S = 10.0  # a stop (SIGTERM) during an outage: what is left is in the snapshot

    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        resume: list[Message] | None,
        stop: threading.Event,
    ) -> None:
        self._stop = stop  # set when a stop (SIGTERM) was asked: see `close`
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
        self._health.pending[id(self)] = len(self._pending)

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
        # Wait for the broker in short steps, and not at all once it looks away: the first
        # connection error ends the wait, so an outage holds the worker up for milliseconds.
        deadline = time.monotonic() + self.FLUSH_S
        while self._pending and self._health.healthy and time.monotonic() < deadline:
            self._producer.flush(0.1)
            self._resend()
        self._producer.poll(0)
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
            if stop_wait_s is not None and self._stop.is_set() and time.monotonic() > deadline:
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
    acknowledged (see `ProducerPartition`)."""

    def __init__(self, config: dict[str, str], topic: str, stop: threading.Event) -> None:
        self._config = config
        self._topic = topic
        self._stop = stop

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[Message] | None
    ) -> ProducerPartition:
        return ProducerPartition(self._config, self._topic, resume_state, self._stop)


def _latency_headers(read_ns: int) -> list[tuple[str, str | bytes | None]]:
    """Headers `cdp-read-ns` (the causing record was read) and `cdp-out-ns` (handed to the
    producer), wall-clock nanoseconds: the pipeline's own share of the latency."""
    return [("cdp-read-ns", str(read_ns).encode()), ("cdp-out-ns", str(time.time_ns()).encode())]
