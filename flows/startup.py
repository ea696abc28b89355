"""What a worker that reads Kafka checks and says before it starts (`cdp run`, `cdp replay`).

- Every source topic exists (asked with a metadata request for all topics, which creates
  none); a missing one is refused, named, with the closest existing names.
- Each partition it reads is logged with where reading starts: the state's saved position
  (the offset after the last one applied; records before it are skipped as applied) or the
  beginning.
- A saved position past the end of its partition (the topic was deleted and made again,
  truncated, or the state belongs to another cluster) is a loud warning: records up to the
  saved position would be skipped as already applied. Brokers such as tansu report a high
  watermark under the true end, so a position past it is confirmed by reading the record
  just before the position before crying wolf.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from config.settings import ConfigError, Settings
from flows import broker, io
from operators.store import StoreError, open_state, process_dirs

LOG = broker.LOG


class StartupError(ConfigError):
    """The worker cannot start: the message names what to fix."""


@dataclass(frozen=True)
class PartitionStart:
    source: str
    topic: str
    partition: int
    saved: int | None  # the next offset to apply, from the state (None: nothing applied)
    end: int  # the high watermark the broker reported
    past_end: bool  # saved position confirmed past the end of the partition

    def describe(self) -> str:
        where = (
            "the beginning (no saved position)"
            if self.saved is None
            else f"offset {self.saved} (saved position)"
        )
        return (
            f"reads topic {self.topic} partition {self.partition} (source {self.source}) "
            f"from {where}; high watermark {self.end}"
        )


def source_topics(settings: Settings) -> dict[str, str]:
    """Topic -> source name of everything the worker reads."""
    topics = {s.topic: s.name for s in settings.sources if s.topic}
    if settings.privacy.topic:
        topics[settings.privacy.topic] = io.PRIVACY_SOURCE
    return topics


def check_sources(
    settings: Settings, state_dir: Path, *, timeout_s: float = 30.0
) -> list[PartitionStart]:
    """Refuse missing source topics; log each partition's start; warn of positions past the
    end. Raises `StartupError`."""
    config: dict[str, Any] = {
        **settings.kafka.client_config(),
        "logger": broker.DISCARD,  # a start-up failure is reported once, below
        "error_cb": broker.ignore,
    }
    bootstrap = settings.kafka.bootstrap_servers
    try:
        topics = AdminClient(config).list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise StartupError(
            f"cannot reach the Kafka broker at {bootstrap} within {timeout_s:.0f} s "
            f"({exc.args[0].str() if exc.args else exc}); is kafka.bootstrap_servers right?"
        ) from None
    wanted = source_topics(settings)
    for topic, source in wanted.items():
        meta = topics.get(topic)
        if meta is None or meta.error is not None:
            near = difflib.get_close_matches(topic, list(topics), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise StartupError(
                f"source {source!r}: topic {topic!r} does not exist on {bootstrap} "
                f"(it is not created for you: a mistyped name would wait forever){hint}"
            )
    saved = saved_positions(state_dir)
    starts: list[PartitionStart] = []
    consumer = Consumer(
        {
            **config,
            "group.id": "cdp-startup-check",  # assign() only, no commits
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "error",
            "allow.auto.create.topics": "false",
        }
    )
    try:
        for topic, source in wanted.items():
            for partition in sorted(topics[topic].partitions):
                tp = TopicPartition(topic, partition)
                _low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
                position = saved.get((source, partition))
                past = (
                    position is not None
                    and position > high
                    and not _exists(consumer, topic, partition, position - 1)
                )
                starts.append(PartitionStart(source, topic, partition, position, high, past))
    finally:
        consumer.close()
    broker.ensure_log_handler()
    for start in starts:
        LOG.info("%s", start.describe())
        if start.past_end:
            LOG.warning(
                "SAVED POSITION PAST THE END: source %s, topic %s partition %d: the state has "
                "applied up to offset %d but the partition ends at %d. The topic was probably "
                "deleted and created again, or truncated, or this state belongs to another "
                "cluster; records at offsets below %d will be skipped as already applied. To "
                "read it afresh, replay into a new state directory.",
                start.source,
                start.topic,
                start.partition,
                (start.saved or 0) - 1,
                start.end,
                start.saved,
            )
    _warn_missing_outputs(settings, set(topics))
    return starts


def to_read(settings: Settings, starts: list[PartitionStart]) -> frozenset[str]:
    """The event partitions (`SOURCE/PARTITION`) with records left to read: a replay's event
    time waits until each has delivered one (`operators.steps.positions`)."""
    events = {s.name for s in settings.sources if s.kind == "event"}
    return frozenset(
        f"{s.source}/{s.partition}" for s in starts if s.source in events and s.end > (s.saved or 0)
    )


def _exists(consumer: Consumer, topic: str, partition: int, offset: int) -> bool:
    """Whether the partition holds a record at `offset` or after (read once, briefly)."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        for _ in range(50):
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                return (msg.offset() or 0) >= offset
            if err.code() in (KafkaError._PARTITION_EOF, KafkaError._AUTO_OFFSET_RESET):
                return False
            if err.code() == KafkaError.OFFSET_OUT_OF_RANGE:
                return False
        return False
    finally:
        consumer.unassign()


def saved_positions(state_dir: Path) -> dict[tuple[str, int], int]:
    """(source, partition) -> the next offset to apply, from a state directory (empty when
    there is none). With several Bytewax keys, the highest over the keys."""
    if not (state_dir / "rocksdb").exists() and not process_dirs(state_dir):
        return {}
    try:
        store = open_state(state_dir)
    except StoreError as exc:
        # Several processes start together: another one may be creating its store right now.
        # The positions are only reported here; the run itself reads its own.
        LOG.info("saved positions not read: %s", exc)
        return {}
    try:
        out: dict[tuple[str, int], int] = {}
        for key, value in store.scan(b"o/"):
            _, _shard, rest = key.decode().split("/", 2)
            source, _, partition = rest.rpartition("/")
            nxt = int(orjson.loads(value)) + 1
            here = (source, int(partition))
            out[here] = max(out.get(here, 0), nxt)
        return out
    finally:
        store.close()


def _warn_missing_outputs(settings: Settings, existing: set[str]) -> None:
    """Destinations' and dead letters' topics that do not exist: the broker must create them
    on the first write, or the Kafka sink stops the worker at its first message."""
    outputs = [d.topic for d in settings.destinations if d.kind == "kafka" and d.topic]
    if settings.dead_letters.kind == "kafka":
        outputs.append(settings.dead_letters.topic)
    for topic in outputs:
        if topic not in existing:
            LOG.warning(
                "output topic %s does not exist yet: it is created on the first write only "
                "if the broker allows it (auto.create.topics.enable)",
                topic,
            )
