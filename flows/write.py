"""The write side: audience changes rendered per destination and written to Kafka, files or
webhooks; dead letters to their file or topic."""

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
from flows.webhook import WebhookSink
from operators import metrics
from operators.destinations import render, render_document
from schemas.records import AudienceChange, DeadLetter, ProfileDocument


def write_changes(
    outputs: Stream[AudienceChange | ProfileDocument], settings: Settings, options: RunOptions
) -> None:
    config = settings.kafka.client_config()
    brokers = config.pop("bootstrap.servers")
    projections = [d for d in settings.destinations if d.kind == "profiles"]
    if projections:
        split = op.branch("split_projection", outputs, lambda x: isinstance(x, AudienceChange))
        changes: Stream[AudienceChange] = split.trues  # type: ignore[assignment]
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
            hook = WebhookSink(dest, dead_letter_writer(settings), options.state_dir / "spool")
            op.output(f"write_{dest.name}", rendered, hook)
    if options.audience_out is not None:
        everything = op.map("render_audience_out", changes, render_all)
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
