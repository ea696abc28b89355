"""The dataflow: sources -> decode -> identity/profile/segments -> destinations.

One process (any number of worker threads) applies identity, profile and segments in one step,
over one engine and store shared by its workers:
```
read ─► decode ─┬─► route_by_identity ─► apply_records ─► render_<dest> ─► <dest>
                └─► dead letters
```
Several processes (`-i/-a`): the identity graph is one Bytewax key, which sees every record;
profiles and segments are applied on shard keys spread over the processes; a profile that
merged away moves to its survivor's shard through the feedback topic:
```
read ─► decode ─► resolve_identities ─┬─► apply_records ─► destinations
                        (key: graph)  │    (shard keys)  └─► feedback topic ─┐
                                      └──────────◄── read_feedback ◄─────────┘
```
`build_flow(settings, options)` is a factory with no side effects; the state store opens on
the worker when the first record arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from config.settings import Settings
from flows import feedback, io
from flows.placement import shard_keys, shard_of_key
from flows.runtime import engine_for
from flows.webhook import WebhookSink
from operators import metrics
from operators.decode import Decoder
from operators.destinations import render
from operators.engine import Engine, Role
from operators.steps.call import Output
from operators.steps.exchange import GRAPH_KEY
from operators.store import shard_of
from schemas.records import (
    Adopt,
    AudienceChange,
    Command,
    DeadLetter,
    Drop,
    Forget,
    Move,
    Record,
    Routed,
    Tick,
)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class RunOptions:
    mode: Literal["files", "replay", "live"]
    state_dir: Path
    audience_out: Path | None = None
    from_ts_ms: int | None = None
    clock: Callable[[], int] = field(default=wall_clock_ms)
    idle_advance_s: float = 1.0  # live mode: event time follows the wall clock this often
    workers: int = 1  # worker threads per process
    recovery: bool = True  # Bytewax recovery on: a key with no snapshot re-emits its outbox
    processes: int = 1
    process_id: int = 0
    run: str = ""  # several processes: the run id of the shared state (flows.feedback)

    @property
    def clustered(self) -> bool:
        return self.processes > 1


class _ApplyRecords(StatefulBatchLogic[Any, Output, tuple[int, int]]):
    """Thin adapter: every call goes to the process's engine for `role` ("all": identity,
    profile and segments in one step; "graph" / "profile": the two steps of several processes).

    Bytewax snapshots only `(key, outbox sequence)`. On resume the builder gets the sequence of
    the key's last durable snapshot and the outputs after it are emitted again; a key with no
    durable snapshot emits its whole outbox again (its records were applied, so they will be
    skipped, but what they emitted may never have reached the destinations). The state itself
    and the applied offsets live in RocksDB, which Bytewax does not roll back.
    """

    # Outputs are kept for this many snapshots of the key before they are dropped: the
    # snapshot Bytewax resumes from can lag the latest ones (the slowest worker decides).
    KEEP_SNAPSHOTS = 100

    def __init__(
        self,
        settings: Settings,
        options: RunOptions,
        route: Callable[[Any], str],
        resume: tuple[int, int] | None,
        role: Role = "all",
    ) -> None:
        self._settings = settings
        self._options = options
        self._route = route
        self._role = role
        if resume is not None:
            self._key, self._resend_after = resume
        else:
            self._key = -1
            self._resend_after = 0 if options.recovery else -1
        self._snapshots: list[int] = []
        self._engine_ref: Engine | None = None
        self._tick: datetime | None = None  # live: the next wall-clock advance

    def _engine(self) -> Engine:
        if self._engine_ref is None:  # opened on first use, on the worker
            options = self._options
            self._engine_ref = engine_for(
                self._settings,
                options.state_dir,
                routing_name(options),
                outbox=options.recovery,
                role=self._role,
                live=options.mode == "live",
            )
        return self._engine_ref

    def _redeliver(self) -> list[Output]:
        if self._resend_after < 0 or self._key < 0:
            return []
        seq, self._resend_after = self._resend_after, -1
        again = self._engine().outbox_after(self._key, seq)
        if self._role == "graph":  # sent again: the profile steps count them again
            self._engine().counts.graph_out += len(again)
        return again

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        if self._key < 0:
            self._key = GRAPH_KEY if self._role == "graph" else shard_of_key(self._route(values[0]))
        out = self._redeliver()
        engine, wall = self._engine(), self._options.clock()
        if self._role == "graph":
            out.extend(engine.route(_flat(values), wall))
        elif self._role == "profile":
            out.extend(engine.process_commands(self._key, _flat(values), wall))
        else:
            out.extend(engine.process(self._key, values, wall))
        return self._packed(out), self.RETAIN

    def _packed(self, out: list[Output]) -> list[Any]:
        """The graph step's outputs travel in lists, one per shard key and call: between
        processes Bytewax pickles each item, and one pickle of many items costs far less."""
        if self._role != "graph" or not out:
            return out
        keys = _shard_keys(self._options, self._settings)
        groups: dict[str, list[Output]] = {}
        for item in out:
            groups.setdefault(command_key(keys, item), []).append(item)  # type: ignore[arg-type]
        return list(groups.values())

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out = self._redeliver()
        if self._options.mode == "live" and self._key >= 0 and self._role != "graph":
            self._tick = None
            wall = self._options.clock()
            out.extend(self._engine().advance(self._key, wall, wall))
        return self._packed(out), self.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out = self._redeliver()
        # End of a replay: event time reaches the last event. A live run that stops keeps
        # its event time (the wall clock moves it on when it starts again).
        if self._key >= 0 and self._options.mode != "live":
            if self._role == "graph":
                out.extend(self._engine().finish_route(self._options.clock()))
            elif self._role == "all":
                out.extend(self._engine().finish(self._key, self._options.clock()))
        return self._packed(out), self.RETAIN

    def notify_at(self) -> datetime | None:
        """Live: the next wall-clock advance, at the earliest timer's due time and at least
        every `idle_advance_s`. Bytewax asks again after every batch, so the answer stays
        fixed until it has come: a time pushed back on each batch never comes while records
        flow, and timers would wait for a pause in the traffic."""
        now = datetime.now(tz=UTC)
        if self._resend_after >= 0 and self._key >= 0:
            return now  # re-emit the outbox right after a resume
        if self._options.mode != "live" or self._role == "graph":
            return None
        if self._tick is None or self._tick <= now:
            self._tick = now + timedelta(seconds=self._options.idle_advance_s)
        if self._key >= 0:
            due = self._engine().next_timer_ms()
            if due is not None:
                at = datetime.fromtimestamp(
                    (due + self._settings.time.allowed_lateness_ms) / 1000, tz=UTC
                )
                return max(now, min(at, self._tick))
        return self._tick

    def snapshot(self) -> tuple[int, int]:
        engine = self._engine()
        seq = engine.outbox_seq(self._key) if self._key >= 0 else 0
        self._snapshots.append(seq)
        if len(self._snapshots) > self.KEEP_SNAPSHOTS:
            engine.prune_outbox(self._key, self._snapshots.pop(0))
        return (self._key, seq)


class _DecodeBatch:
    """The read side of one batch in one call: each input message located (`locate`: a Kafka
    message to its origin and bytes), decoded, dropped when before the start of a replay
    `--from`, and numbered in its partition's read order (`Record.seq`). A partition is read
    by one worker, in order, so a counter per partition is exact; a number is used only by a
    record that is kept. One call a batch, not four steps a record: Bytewax's per-item cost
    and the metric updates are paid once."""

    def __init__(
        self,
        decoder: Decoder,
        locate: Callable[[Any], io.Raw] | None = None,
        start_ms: int | None = None,
        written: Callable[[Any], int | None] | None = None,
    ) -> None:
        self._decoder = decoder
        self._locate = locate
        self._start_ms = start_ms
        self._written = written
        self._counts: dict[tuple[str, int], int] = {}

    def __call__(self, batch: list[Any]) -> list[Record | Forget | DeadLetter]:
        decoder, locate, start, counts = self._decoder, self._locate, self._start_ms, self._counts
        written, lag = self._written, metrics.EVENT_LAG
        read_ns = time.time_ns()
        wall_ms = read_ns // 1_000_000
        out: list[Record | Forget | DeadLetter] = []
        per_source: dict[str, int] = {}
        for item in batch:
            origin, raw = item if locate is None else locate(item)
            source = origin.source
            per_source[source] = per_source.get(source, 0) + 1
            decoded: Record | Forget | DeadLetter
            if source == io.PRIVACY_SOURCE:
                decoded = decoder.decode_forget(origin, raw)
            else:
                part = (source, origin.partition)
                seq = counts.get(part, 0) + 1
                # When the record was written: its message timestamp, never after the wall
                # clock (a producer's clock can be wrong too); a file's record: now.
                stamp = None if written is None else written(item)
                at = wall_ms if stamp is None or stamp > wall_ms else stamp
                decoded = decoder.decode(origin, raw, read_ns, seq, at)
                if isinstance(decoded, Record):
                    ts = decoded.ts_ms
                    if start is not None and ts is not None and ts < start:
                        io.RAW.dropped += 1
                        continue
                    counts[part] = seq
                    if ts is not None:
                        lag.observe((wall_ms - ts) / 1000)
            if isinstance(decoded, DeadLetter):
                io.RAW.dropped += 1
                reason = metrics.reason_kind(decoded.reason)
                metrics.DEAD_LETTERS.labels(source, reason).inc()
            out.append(decoded)
        for source, n in per_source.items():
            metrics.records_in(source).inc(n)
        return out


def _written_ms(msg: Any) -> int | None:
    """A Kafka message's timestamp (create or log-append time), None when it has none."""
    stamp = msg.timestamp
    return stamp[1] if stamp is not None and stamp[0] != 0 and stamp[1] > 0 else None


def routing_name(options: RunOptions) -> str:
    if options.clustered:  # "placed": shards on planned workers (flows.placement)
        return f"processes:{options.processes}x{options.workers}:placed"
    return "single" if options.workers <= 1 else "shards"


def _flat(values: list[Any]) -> list[Any]:
    """Items that came packed in lists (see `_ApplyRecords._packed`), unpacked in order."""
    return [x for v in values for x in (v if isinstance(v, list) else (v,))]


def _shard_keys(options: RunOptions, settings: Settings) -> tuple[str, ...]:
    return shard_keys(settings.shards, options.processes * options.workers)[1]


def command_key(keys: Sequence[str], item: Command | list[Command]) -> str:
    """The Bytewax key of the shard a command is about (a packed list goes where its items
    go); `keys` names each shard (`flows.placement.shard_keys`)."""
    if isinstance(item, list):
        item = item[0]
    if isinstance(item, Routed | Drop):
        target = item.canonical
    elif isinstance(item, Move):
        target = item.loser
    elif isinstance(item, Adopt):
        target = item.survivor
    else:
        assert isinstance(item, Tick)
        return keys[item.shard]
    return keys[shard_of(target, len(keys))]


def router(settings: Settings, workers: int) -> Callable[[Record | Forget], str]:
    """The Bytewax key of a record. One worker: a single key, so records are applied in input
    order. Several: the shard of the record's highest-priority identity."""
    if workers <= 1:
        return lambda _record: "0000"
    shards = settings.shards

    def route(item: Record | Forget) -> str:
        identity = item.identity if isinstance(item, Forget) else item.identities[0]
        return f"{shard_of(identity, shards):04d}"

    return route


def build_flow(settings: Settings, options: RunOptions) -> Dataflow:
    flow = Dataflow("cdp")
    records, dead, raw_parts = decoded_records(flow, settings, options)
    if options.clustered:
        changes = _apply_on_processes(flow, records, settings, options, raw_parts)
    else:
        route = router(settings, options.workers)
        keyed = op.key_on("route_by_identity", records, route)
        applied = op.stateful_batch(
            "apply_records", keyed, lambda resume: _ApplyRecords(settings, options, route, resume)
        )
        changes = _only_changes(op.key_rm("unkey_changes", applied))
    write_changes(changes, settings, options)
    write_dead_letters(dead, settings)
    return flow


def _only_changes(outputs: Stream[Output]) -> Stream[AudienceChange]:
    """One process emits only audience changes (commands exist with several processes)."""
    return outputs  # type: ignore[return-value]


def decoded_records(
    flow: Dataflow, settings: Settings, options: RunOptions
) -> tuple[Stream[Record | Forget], Stream[DeadLetter], Callable[[], int]]:
    """Decoded records in read order, the dead letters, and a count of input partitions."""
    raw, locate, raw_parts = _read(flow, settings, options)
    written = None if locate is None else _written_ms
    decode = _DecodeBatch(Decoder.from_settings(settings), locate, options.from_ts_ms, written)
    decoded = op.flat_map_batch("decode", raw, decode)
    split = op.branch("split_dead_letters", decoded, lambda x: not isinstance(x, DeadLetter))
    records: Stream[Record | Forget] = split.trues  # type: ignore[assignment]
    dead: Stream[DeadLetter] = split.falses  # type: ignore[assignment]
    return records, dead, raw_parts


def _apply_on_processes(
    flow: Dataflow,
    records: Stream[Record | Forget],
    settings: Settings,
    options: RunOptions,
    raw_parts: Callable[[], int],
) -> Stream[AudienceChange]:
    """Identity on one key, profiles on shard keys, moves through the feedback topic."""
    # Every record goes to the graph key, a list per input batch (see `_packed`).
    packed = op.flat_map_batch("pack_for_graph", records, lambda batch: [batch])
    graph_key, keys = shard_keys(settings.shards, options.processes * options.workers)
    to_graph = op.key_on("to_graph", packed, lambda _r: graph_key)
    graph = op.stateful_batch(
        "resolve_identities",
        to_graph,
        lambda resume: _ApplyRecords(settings, options, lambda _r: graph_key, resume, "graph"),
    )
    graph_out: Stream[Command] = op.key_rm("unkey_graph", graph)  # type: ignore[arg-type]
    config = settings.kafka.client_config()
    topic = settings.identity.feedback_topic
    ends = None
    if options.mode != "live":
        processes = options.processes
        ends = lambda: feedback.Termination(processes, raw_parts())  # noqa: E731
    moved = op.input(
        "read_feedback", flow, feedback.FeedbackSource(dict(config), topic, options.run, ends)
    )
    commands = op.merge("commands", graph_out, moved)
    key = partial(command_key, keys)
    keyed = op.key_on("to_shard", commands, key)
    applied = op.stateful_batch(
        "apply_records",
        keyed,
        lambda resume: _ApplyRecords(settings, options, key, resume, "profile"),
    )
    outputs = op.key_rm("unkey_outputs", applied)
    split = op.branch("split_feedback", outputs, lambda x: isinstance(x, AudienceChange))
    moves: Stream[Adopt] = split.falses  # type: ignore[assignment]
    run = options.run
    messages = op.map(
        "encode_feedback",
        moves,
        lambda a: io.keyed_message(
            f"{a.survivor[0]}:{a.survivor[1]}", feedback.encode_command(run, a)
        ),
    )
    routed = op.key_on("route_feedback", messages, lambda _m: "0")
    brokers = config.pop("bootstrap.servers")
    op.output("write_feedback", routed, io.kafka_topic_sink(brokers, topic, config))
    return split.trues  # type: ignore[return-value]


def _read(
    flow: Dataflow, settings: Settings, options: RunOptions
) -> tuple[Stream[Any], Callable[[Any], io.Raw] | None, Callable[[], int]]:
    """The input messages, how to locate one (None: they are `io.Raw` already) and a count
    of input partitions."""
    if options.mode == "files":
        inputs = [
            io.FileInput(s.name, settings.resolve(s.path)) for s in settings.sources if s.path
        ]
        if not inputs:
            raise ValueError("no source has a 'path': nothing to read with --files")
        files = io.FilesSource(inputs)
        return op.input("read_files", flow, files), None, lambda: len(files.list_parts())
    topics = {s.topic: s.name for s in settings.sources if s.topic}
    if not topics:
        raise ValueError("no source has a 'topic': nothing to read from Kafka")
    if settings.privacy.topic:
        topics[settings.privacy.topic] = io.PRIVACY_SOURCE
    config = settings.kafka.client_config()
    config.pop("bootstrap.servers")
    # librdkafka waits up to 500 ms for a fetch to fill by default; live mode wants latency.
    if options.mode == "live":
        config.setdefault("fetch.wait.max.ms", "10")
    source = io.kafka_source(
        settings.kafka.bootstrap_servers, list(topics), tail=options.mode == "live", config=config
    )
    messages = op.input("read_kafka", flow, source)
    return messages, partial(io.kafka_raw, topics), lambda: len(source.list_parts())


def write_changes(changes: Stream[AudienceChange], settings: Settings, options: RunOptions) -> None:
    config = settings.kafka.client_config()
    brokers = config.pop("bootstrap.servers")
    for dest in settings.destinations:
        step = f"render_{dest.name}"
        rendered = op.flat_map_batch(step, changes, partial(_render_batch, dest))
        if dest.kind == "kafka":
            assert dest.topic is not None
            op.output(
                f"write_{dest.name}", rendered, io.kafka_topic_sink(brokers, dest.topic, config)
            )
        elif dest.kind == "file":
            assert dest.path is not None
            op.output(f"write_{dest.name}", rendered, io.JsonLinesSink(settings.resolve(dest.path)))
        else:
            hook = WebhookSink(dest, dead_letter_writer(settings), options.state_dir / "spool")
            op.output(f"write_{dest.name}", rendered, hook)
    if options.audience_out is not None:
        everything = op.map("render_audience_out", changes, render_all)
        op.output("write_audience_out", everything, io.JsonLinesSink(options.audience_out))


def _render_batch(dest: Any, changes: list[AudienceChange]) -> list[Any]:
    """A batch of changes as this destination's sink takes them (those it does not take left
    out), observing each one's latency: Kafka messages on the sink's one key, JSON lines for a
    file, `(profile id, body)` for a webhook."""
    now = time.time_ns()
    kind = dest.kind
    out: list[Any] = []
    for change in changes:
        body = render(change, dest)
        if body is None:
            continue
        if change.read_ns:
            metrics.LATENCY.observe((now - change.read_ns) / 1e9)
        if kind == "kafka":
            out.append(("0", io.timed_message(change.profile_id, body, change.read_ns)))
        elif kind == "webhook":
            out.append((change.profile_id, body))
        else:
            out.append(body)
    return out


def render_all(change: AudienceChange) -> bytes:
    return orjson.dumps(change.to_dict())


def dead_letter_writer(settings: Settings) -> Callable[[list[bytes]], None]:
    """For sinks that find dead letters themselves (a webhook that gave up)."""
    target = settings.dead_letters
    if target.kind == "file":
        return io.append_lines(settings.resolve(target.path))
    return io.produce_to(settings.kafka.client_config(), target.topic)


def write_dead_letters(dead: Stream[DeadLetter], settings: Settings) -> None:
    target = settings.dead_letters
    encoded = op.map("encode_dead_letters", dead, lambda d: d.to_json())
    if target.kind == "file":
        op.output("write_dead_letters", encoded, io.JsonLinesSink(settings.resolve(target.path)))
    else:
        config = settings.kafka.client_config()
        brokers = config.pop("bootstrap.servers")
        keyed = op.map("key_dead_letters", encoded, io.dead_letter_message)
        op.output("write_dead_letters", keyed, io.kafka_sink(brokers, target.topic, config))
