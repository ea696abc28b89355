"""The read side: input messages located, decoded (or dead-lettered), filtered and numbered in
read order, one call a batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from config.settings import Settings
from flows import io
from flows.options import RunOptions
from operators import metrics
from operators.decode import Decoder
from schemas.records import DeadLetter, Forget, Record


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
                # The message timestamp is also the time of a profile record whose body has
                # none: fixed by the broker, whatever order the partitions are read in.
                message = None if stamp is None else at
                decoded = decoder.decode(origin, raw, read_ns, seq, at, message_ms=message)
                if isinstance(decoded, Record):
                    # Events only: a profile record's time is not event time (`Record.ts_ms`);
                    # a replay `--from` a time still needs every profile record.
                    ts = decoded.ts_ms if decoded.kind == "event" else None
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
