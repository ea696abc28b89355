"""Personalized messages (issue #16): what a destination asks its messages to carry besides
the change itself: profile `attributes` (dotted paths), `traits` (names of `traits:`) and the
`event` (the body of the record that caused the change; null when a timer, a merge or an edit
of the audiences caused it).

The engine computes one payload per emit, for the union of what the destinations want
(`wants_of`), and only when some destination wants one; each destination then takes its own
part of it when its message is rendered (`personalize`), under its `max_payload_bytes`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from config.settings import DestinationSettings
from operators import metrics
from operators.profile import Profile, attribute_values
from operators.segments import SegmentIndex, trait_values

# Left out in this order when a message is over its limit: the event is the largest and the
# least needed to address a person; the attributes (a name, an email) the most.
SHED_ORDER = ("event", "traits", "attributes")


@dataclass(frozen=True, slots=True)
class Wants:
    """What payloads must hold: falsy when nothing (then none is computed)."""

    attributes: tuple[str, ...] = ()
    traits: tuple[str, ...] = ()
    event: bool = False

    def __bool__(self) -> bool:
        return bool(self.attributes or self.traits or self.event)


def wants_of(destinations: Iterable[DestinationSettings]) -> Wants:
    """The union of what the destinations want, in the order first named."""
    attributes: dict[str, None] = {}
    traits: dict[str, None] = {}
    event = False
    for dest in destinations:
        if dest.kind == "profiles":
            continue
        attributes.update(dict.fromkeys(dest.attributes))
        traits.update(dict.fromkeys(dest.traits))
        event = event or dest.event
    return Wants(tuple(attributes), tuple(traits), event)


def payload(
    profile: Profile,
    index: SegmentIndex,
    now_ms: int,
    event_body: dict[str, Any] | None,
    wants: Wants,
) -> dict[str, Any]:
    """`{"attributes": {path: value}, "traits": {name: value}, "event": body | None}`, with
    only the keys wanted. Traits are read at `now_ms` (a windowed one changes with time)."""
    out: dict[str, Any] = {}
    if wants.attributes:
        out["attributes"] = {path: attribute_value(profile, path) for path in wants.attributes}
    if wants.traits:
        out["traits"] = trait_values(profile, index, now_ms, wants.traits)
    if wants.event:
        out["event"] = event_body
    return out


def attribute_value(profile: Profile, path: str) -> Any:
    """One value as itself, several (through lists) as a list, none as None. A path to an
    object (`homeAddress`) gives the object of its fields."""
    values = attribute_values(profile, path)
    if len(values) == 1:
        return values[0]
    if values:
        return values
    return _subtree(profile["attrs"], path)


def _subtree(attrs: dict[str, Any], path: str) -> dict[str, Any] | None:
    prefix = path + "."
    out: dict[str, Any] = {}
    for leaf in sorted(k for k in attrs if k.startswith(prefix)):
        node = out
        parts = leaf[len(prefix) :].split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = attrs[leaf]
    return out or None


def own_part(payload: dict[str, Any], dest: DestinationSettings) -> dict[str, Any]:
    """The destination's own keys of a payload made for the union of the destinations."""
    out: dict[str, Any] = {}
    if dest.attributes:
        attrs = payload.get("attributes") or {}
        out["attributes"] = {path: attrs.get(path) for path in dest.attributes}
    if dest.traits:
        traits = payload.get("traits") or {}
        out["traits"] = {name: traits.get(name) for name in dest.traits}
    if dest.event:
        out["event"] = payload.get("event")
    return out


def personalize(
    doc: dict[str, Any], payload: dict[str, Any] | None, dest: DestinationSettings
) -> bytes:
    """The JSON of `doc` with the destination's part of `payload` beside its keys. Over
    `dest.max_payload_bytes`, the event, then the traits, then the attributes are left out
    and named in `"omitted"` (the change itself is always sent). No payload (none was
    asked for when the change was made): `doc` alone."""
    if payload is None or not dest.personalized:
        return orjson.dumps(doc)
    full = {**doc, **own_part(payload, dest)}
    body = orjson.dumps(full)
    limit = dest.max_payload_bytes
    if len(body) <= limit:
        return body
    omitted: list[str] = []
    for part in SHED_ORDER:
        if part not in full:
            continue
        del full[part]
        omitted.append(part)
        metrics.PAYLOAD_OMITTED.labels(dest.name, part).inc()
        body = orjson.dumps({**full, "omitted": omitted})
        if len(body) <= limit:
            break
    return body
