"""What each destination receives: its segments, its identities, hashed where asked, and the
personalization it asked for (`operators.payloads`)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from config.settings import DestinationSettings
from operators.payloads import personalize
from schemas.records import AudienceChange, JourneySend, ProfileDocument


def sha256_hex(value: str) -> str:
    """Ad platforms match on SHA-256 of the normalised (trimmed, lower-case) value."""
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()


def render(change: AudienceChange, destination: DestinationSettings) -> bytes | None:
    """The JSON line for this destination, or None when it does not take this segment. The
    exits of an audience taken out of the config (reason `removed`) go to every destination:
    one that took the audience may no longer name it (the config check refuses an unknown
    id), and it must still be told."""
    if destination.kind == "profiles":
        return None  # it takes profile documents (`render_document`)
    taken = destination.segments
    if taken is not None and change.segment_id not in taken and change.reason != "removed":
        return None
    if destination.requires_consent and change.consent_denied:
        return None
    return _body(change.to_dict(), change.identities, change.payload, destination)


def render_send(send: JourneySend, destination: DestinationSettings) -> bytes:
    """A journey's message as its destination receives it (`send.destination` names this
    one)."""
    return _body(send.to_dict(), send.identities, send.payload, destination)


def _body(
    doc: dict[str, Any],
    identities: dict[str, list[str]],
    payload: dict[str, Any] | None,
    destination: DestinationSettings,
) -> bytes:
    """`doc` with the identities the destination takes (hashed where it asks) and its part
    of the payload. The common case, all identities in clear and nothing added, is `doc`."""
    if destination.identities is not None or destination.hash_identities:
        doc["identities"] = _identities(identities, destination)
    return personalize(doc, payload, destination)


def _identities(
    identities: dict[str, list[str]], destination: DestinationSettings
) -> dict[str, list[str]]:
    """The namespaces the destination takes, those it asks hashed as SHA-256."""
    wanted = destination.identities
    hashed = set(destination.hash_identities)
    out: dict[str, list[str]] = {}
    for namespace, values in identities.items():
        if wanted is not None and namespace not in wanted:
            continue
        if namespace in hashed:
            out[namespace] = [sha256_hex(v) for v in values]
        else:
            out[namespace] = list(values)
    return out


def render_document(document: ProfileDocument, topic: bool) -> bytes | None:
    """A profile document as a `profiles` destination writes it: its JSON; for a topic, a
    forgotten profile is a tombstone (None: the compacted topic then forgets it too), for a
    file its `deleted` record."""
    if topic and document.deleted:
        return None
    return orjson.dumps(document.document)
