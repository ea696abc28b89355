"""The write side: audience changes rendered per destination and written to Kafka, files or
webhooks; each journey send to the one destination it names; profile documents to the
`profiles` destinations; dead letters to their file or topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream

from config.settings import DestinationSettings, Settings
from flows import io
from flows.options import RunOptions
from flows.webhook import Post, WebhookSink
from operators import metrics
from operators.destinations import render, render_document, render_send
from schemas.records import AudienceChange, DeadLetter, JourneySend, ProfileDocument

Delivered = AudienceChange | ProfileDocument | JourneySend  # what the engine hands the sinks
Message = AudienceChange | JourneySend  # what the kafka, file and webhook destinations take


def write_changes(outputs: Stream[Delivered], settings: Settings, options: RunOptions) -> None:
    config = settings.kafka.client_config()
    brokers = config.pop("bootstrap.servers")
    projections = [d for d in settings.destinations if d.kind == "profiles"]
    if projections:
        split = op.branch("split_projection", outputs, lambda x: not isinstance(x, ProfileDocument))
        changes: Stream[Message] = split.trues  # type: ignore[assignment]
        documents: Stream[ProfileDocument] = split.falses  # type: ignore[assignment]
        for dest in projections:
            _write_documents(documents, dest, settings, brokers, config)
    else:  # without a `profiles` destination the engine makes no documents
        changes = outputs  # type: ignore[assignment]
    for dest in settings.destinations:
        if dest.kind == "profiles":
            continue
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
            state = options.state_dir
            dead = dead_letter_writer(settings)
            hook = WebhookSink(dest, dead, state / "spool", state / "delivered")
            op.output(f"write_{dest.name}", rendered, hook)
    if options.audience_out is not None:
        everything = op.flat_map_batch("render_audience_out", changes, audience_lines)
        op.output("write_audience_out", everything, io.JsonLinesSink(options.audience_out))


def _write_documents(
    documents: Stream[ProfileDocument],
    dest: DestinationSettings,
    settings: Settings,
    brokers: str,
    config: dict[str, str],
) -> None:
    """The profile projection: a compacted topic keyed by profile id (a forgotten profile is a
    tombstone), or a JSON-lines file."""
    step = f"render_{dest.name}"
    if dest.topic is not None:
        rendered = op.flat_map_batch(step, documents, _document_messages)
        sink = io.kafka_topic_sink(brokers, dest.topic, config)
        op.output(f"write_{dest.name}", rendered, sink)
    else:
        assert dest.path is not None
        lines = op.flat_map_batch(step, documents, _document_lines)
        op.output(f"write_{dest.name}", lines, io.JsonLinesSink(settings.resolve(dest.path)))


def _document_messages(documents: list[ProfileDocument]) -> list[Any]:
    return [
        ("0", io.timed_message(d.profile_id, render_document(d, topic=True), d.read_ns))
        for d in documents
    ]


def _document_lines(documents: list[ProfileDocument]) -> list[Any]:
    return [render_document(d, topic=False) for d in documents]


def render_message(item: Message, dest: DestinationSettings) -> bytes | None:
    """The body `dest` receives for an audience change or a journey send; None if it does
    not take it. A send goes to the destination it names only, whatever its `segments`."""
    if isinstance(item, JourneySend):
        return render_send(item, dest) if item.destination == dest.name else None
    return render(item, dest)


def _render_batch(dest: DestinationSettings, items: list[Message]) -> list[Any]:
    """A batch of changes and sends as this destination's sink takes them (those it does not
    take left out), observing each change's latency: Kafka messages on the sink's one key
    (the message keyed by profile id), JSON lines for a file, a `Post` for a webhook (its
    lane by profile id, its id the idempotency key)."""
    now = time.time_ns()
    kind = dest.kind
    out: list[Any] = []
    for item in items:
        body = render_message(item, dest)
        if body is None:
            continue
        if item.read_ns and isinstance(item, AudienceChange):
            metrics.LATENCY.observe((now - item.read_ns) / 1e9)
        if kind == "kafka":
            out.append(("0", io.timed_message(item.profile_id, body, item.read_ns)))
        elif kind == "webhook":
            out.append(Post(item.profile_id, body, item.id, isinstance(item, JourneySend)))
        else:
            out.append(body)
    return out


def render_all(change: AudienceChange) -> bytes:
    return orjson.dumps(change.to_dict())


def audience_lines(items: list[Message]) -> list[bytes]:
    """`--audience-out`: every audience change, as it is (journey sends are not in it)."""
    return [render_all(i) for i in items if isinstance(i, AudienceChange)]


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
