"""The feedback topic of several processes (DESIGN §2-3): profiles that moved after a merge
travel here from one profile step to another, since a Bytewax dataflow has no cycles. The
same topic carries each process's work counts, from which a replay knows it is over.

Messages (JSON): a command, `{"run": RUN, "cmd": "adopt", ...}` (schemas.records.Adopt), or a
status, `{"run": RUN, "status": {...}}`. `RUN` names one run of a state directory, so what an
earlier run left in the topic is ignored.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from flows import io
from operators.steps.exchange import FEEDBACK_SOURCE, FlowCounts
from schemas.records import Adopt, Origin, command_from_stored


def run_token(state_root: Path) -> str:
    """The run id of a state directory shared by the processes: made by whichever process
    starts first (atomically: written beside, then linked into place), read by the others."""
    state_root.mkdir(parents=True, exist_ok=True)
    path = state_root / "run-id"
    if not path.exists():
        fresh = state_root / f".run-id.{os.getpid()}"
        fresh.write_text(secrets.token_hex(8))
        try:
            os.link(fresh, path)
        except FileExistsError:
            pass
        finally:
            fresh.unlink()
    return path.read_text().strip()


def ensure_topic(config: dict[str, str], topic: str) -> None:
    """Create the feedback topic (one partition: it keeps every command in one order)."""
    admin = AdminClient({"bootstrap.servers": config["bootstrap.servers"]})
    if topic in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    try:
        futures[topic].result(10)
    except Exception as exc:
        if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
    for _ in range(100):
        if topic in admin.list_topics(timeout=10).topics:
            return
        time.sleep(0.1)


@dataclass(frozen=True)
class Status:
    process: int
    started_ns: int  # when this process started: a restarted process's statuses are newer
    n: int  # this process's status number: increases with every status it sends
    parts_ended: int
    read: int
    dropped: int
    raw_out: int
    graph_out: int
    graph_done: int
    fb_out: int
    fb_done: int


class Termination:
    """Counting termination detection over the processes' statuses (DESIGN §3).

    The work is over when every input partition has ended, every record read was dropped or
    handled by the graph step, every graph output and every feedback command was handled, and
    the totals stayed the same across two rounds of fresh statuses from every process."""

    def __init__(self, processes: int, input_parts: int) -> None:
        self.processes = processes
        self.input_parts = input_parts
        self.latest: dict[int, Status] = {}
        self._balanced: tuple[tuple[int, ...], tuple[tuple[int, int], ...]] | None = None
        self.finished = False

    def observe(self, status: Status) -> bool:
        held = self.latest.get(status.process)
        if held is not None and (status.started_ns, status.n) <= (held.started_ns, held.n):
            return self.finished
        self.latest[status.process] = status
        if len(self.latest) < self.processes:
            return False
        every = list(self.latest.values())
        ended = sum(s.parts_ended for s in every)
        read = sum(s.read for s in every)
        handled = sum(s.dropped + s.raw_out for s in every)
        graph = (sum(s.graph_out for s in every), sum(s.graph_done for s in every))
        fb = (sum(s.fb_out for s in every), sum(s.fb_done for s in every))
        if ended < self.input_parts or read != handled or graph[0] != graph[1] or fb[0] != fb[1]:
            self._balanced = None
            return False
        totals = (read, graph[0], fb[0])
        numbers = tuple((self.latest[p].started_ns, self.latest[p].n) for p in sorted(self.latest))
        if self._balanced is not None and self._balanced[0] == totals:
            if all(now > then for now, then in zip(numbers, self._balanced[1], strict=True)):
                self.finished = True
                return True
            return False
        self._balanced = (totals, numbers)
        return False


STARTED_NS = time.time_ns()


def local_status(process: int, n: int, counts: list[FlowCounts]) -> Status:
    raw = io.RAW
    return Status(
        process=process,
        started_ns=STARTED_NS,
        n=n,
        parts_ended=raw.parts_ended,
        read=raw.read,
        dropped=raw.dropped,
        raw_out=sum(c.raw_out for c in counts),
        graph_out=sum(c.graph_out for c in counts),
        graph_done=sum(c.graph_done for c in counts),
        fb_out=sum(c.fb_out for c in counts),
        fb_done=sum(c.fb_done for c in counts),
    )


class StatusPublisher:
    """Sends this process's status to every partition of the feedback topic, `every_s`."""

    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        run: str,
        *,
        process: int,
        counts: Callable[[], list[FlowCounts]],
        every_s: float = 0.1,
    ) -> None:
        self._producer = Producer({**config, "linger.ms": "0"})
        self._topic = topic
        self._run = run
        self._process = process
        self._counts = counts
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdp-status", daemon=True)

    def __enter__(self) -> StatusPublisher:
        parts = self._producer.list_topics(self._topic, timeout=10).topics[self._topic].partitions
        self._partitions = sorted(parts)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._producer.flush(10)

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self._every):
            n += 1
            status = local_status(self._process, n, self._counts())
            value = orjson.dumps({"run": self._run, "status": asdict(status)})
            for partition in self._partitions:
                self._producer.produce(self._topic, value, partition=partition)
            self._producer.flush(5)


def encode_command(run: str, adopt: Adopt) -> bytes:
    return orjson.dumps({"run": run, **adopt.to_stored()})


class _FeedbackPartition(StatefulSourcePartition[Adopt, int]):
    """Reads one partition of the feedback topic: commands of this run out, statuses into the
    termination detector (replay: the partition ends when the work is over; live: never)."""

    IDLE = timedelta(milliseconds=5)

    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        partition: int,
        *,
        resume: int | None,
        run: str,
        termination: Termination | None,
    ) -> None:
        self._consumer = Consumer(
            {
                "group.id": f"cdp-feedback-{run}",  # assign() only, no commits
                "enable.auto.commit": "false",
                "fetch.wait.max.ms": "10",
                **config,
            }
        )
        start = OFFSET_BEGINNING if resume is None else resume
        self._consumer.assign([TopicPartition(topic, partition, start)])
        self._partition = partition
        self._next = resume
        self._run = run
        self._termination = termination
        self._awake: datetime | None = None

    def next_batch(self) -> list[Adopt]:
        if io.STOP.is_set() or (self._termination is not None and self._termination.finished):
            raise StopIteration
        out: list[Adopt] = []
        # Only what librdkafka has already fetched: a timeout would block the worker each poll.
        messages = self._consumer.consume(1000, 0)
        # Nothing there: look again in a few ms, without spinning (the worker has other work).
        self._awake = None if messages else datetime.now(tz=UTC) + self.IDLE
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"feedback topic: {err}")
            offset = msg.offset()
            assert offset is not None
            self._next = offset + 1
            data: dict[str, Any] = orjson.loads(msg.value() or b"{}")
            if data.get("run") != self._run:
                continue  # an earlier run's
            if "status" in data:
                if self._termination is not None:
                    self._termination.observe(Status(**data["status"]))
                continue
            command = command_from_stored(data, Origin(FEEDBACK_SOURCE, self._partition, offset))
            if not isinstance(command, Adopt):
                raise RuntimeError(f"feedback topic: unexpected command {data.get('cmd')!r}")
            out.append(command)
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int | None:  # type: ignore[override]
        return self._next

    def close(self) -> None:
        self._consumer.close()


class FeedbackSource(FixedPartitionedSource[Adopt, int]):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        run: str,
        termination: Callable[[], Termination] | None,
    ) -> None:
        self._config = config
        self._topic = topic
        self._run = run
        self._termination = termination

    def list_parts(self) -> list[str]:
        consumer = Consumer({**self._config, "group.id": f"cdp-feedback-{self._run}"})
        try:
            meta = consumer.list_topics(self._topic, timeout=10).topics[self._topic]
            return [str(p) for p in sorted(meta.partitions)]
        finally:
            consumer.close()

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _FeedbackPartition:
        termination = None if self._termination is None else self._termination()
        return _FeedbackPartition(
            self._config,
            self._topic,
            int(for_part),
            resume=resume_state,
            run=self._run,
            termination=termination,
        )
