"""What each destination receives: its segments, its identities, hashed where asked."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from config.settings import DestinationSettings
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
    doc: dict[str, Any] = change.to_dict()
    wanted = destination.identities
    if wanted is None and not destination.hash_identities:  # the common case: all, in clear
        return orjson.dumps(doc)
    hashed = set(destination.hash_identities)
    identities: dict[str, list[str]] = {}
    for namespace, values in change.identities.items():
        if wanted is not None and namespace not in wanted:
            continue
        if namespace in hashed:
            identities[namespace] = [sha256_hex(v) for v in values]
        else:
            identities[namespace] = list(values)
    doc["identities"] = identities
    return orjson.dumps(doc)


def render_document(document: ProfileDocument, topic: bool) -> bytes | None:
    """A profile document as a `profiles` destination writes it: its JSON; for a topic, a
    forgotten profile is a tombstone (None: the compacted topic then forgets it too), for a
    file its `deleted` record."""
    if topic and document.deleted:
        return None
    return orjson.dumps(document.document)


# render_send: replaced by the payloads branch (which personalizes; keep that one on merge)
def render_send(send: JourneySend, destination: DestinationSettings) -> bytes:
    """A journey send as its destination receives it: its JSON, with its payload's keys."""
    doc: dict[str, Any] = send.to_dict()
    if send.payload:
        doc.update(send.payload)
    return orjson.dumps(doc)
