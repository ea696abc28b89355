"""Send audience changes and profile documents to the configured destinations outside a
dataflow (`cdp forget`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Producer

from config.settings import DestinationSettings, Settings
from flows import io
from flows.webhook import Post, WebhookSink
from flows.write import dead_letter_writer
from operators.destinations import render, render_document
from schemas.records import AudienceChange, JourneySend, ProfileDocument


def deliver(
    settings: Settings,
    changes: Sequence[AudienceChange | JourneySend],
    spool_dir: Path | None = None,
    documents: Sequence[ProfileDocument] = (),
) -> dict[str, int]:
    """Render and write each change to every destination that takes it, and the profile
    documents to the `profiles` destinations; counts per name. `spool_dir`: a webhook's
    changes join those waiting in its spool, after them (a change must not overtake an
    earlier one of its profile). Journey sends are ignored: `cdp forget` makes none (a
    forgotten profile's journeys end without a message)."""
    only = [c for c in changes if isinstance(c, AudienceChange)]
    sent: dict[str, int] = {}
    for dest in settings.destinations:
        if dest.kind == "profiles":
            sent[dest.name] = _deliver_documents(settings, dest, documents)
            continue
        rendered = [Post(c.profile_id, body, c.id) for c in only if (body := render(c, dest))]
        sent[dest.name] = len(rendered)
        if not rendered:
            continue
        bodies = [post.body for post in rendered]
        if dest.kind == "file":
            assert dest.path is not None
            io.append_lines(settings.resolve(dest.path))(bodies)
        elif dest.kind == "kafka":
            assert dest.topic is not None
            producer = Producer({"enable.idempotence": "true", **settings.kafka.client_config()})
            for post in rendered:
                producer.produce(dest.topic, post.body, key=post.profile.encode())
            if producer.flush(30) != 0:
                raise RuntimeError(f"destination {dest.name}: Kafka did not take every change")
        else:
            sink = WebhookSink(dest, dead_letter_writer(settings), spool_dir)
            hook = sink.build("deliver", 0, 1)
            try:
                hook.write_batch(rendered)
            finally:
                hook.close()
    io.close_files()
    return sent


def _deliver_documents(
    settings: Settings, dest: DestinationSettings, documents: Sequence[ProfileDocument]
) -> int:
    if not documents:
        return 0
    if dest.path is not None:
        lines = [render_document(d, topic=False) or b"" for d in documents]
        io.append_lines(settings.resolve(dest.path))(lines)
        return len(lines)
    assert dest.topic is not None
    producer = Producer({"enable.idempotence": "true", **settings.kafka.client_config()})
    for doc in documents:
        producer.produce(dest.topic, render_document(doc, topic=True), key=doc.profile_id.encode())
    if producer.flush(30) != 0:
        raise RuntimeError(f"destination {dest.name}: Kafka did not take every document")
    return len(documents)
