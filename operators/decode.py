"""Bytes -> typed `Record`, or a `DeadLetter` that says why.

Pure: no I/O, no clock. Everything a later step needs is decided here, once: the identities
(from `identityMap` and the source's identity descriptors, normalised, blocked values dropped,
best first), the event time, the event id (derived when absent), the event type.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from config.settings import Settings, SourceSettings
from operators.fields import FieldSpec, coerce_fields
from operators.identity import IdentityRules
from schemas.records import DeadLetter, Forget, Identity, Origin, Record


class Rejected(ValueError):
    """A record that cannot be used; the message is the dead letter's reason (no values in it)."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A source as decode needs it: descriptors pre-split into path tuples."""

    index: int
    settings: SourceSettings
    descriptors: tuple[tuple[tuple[str, ...], str, str], ...]  # (path, dotted, namespace)
    fields: tuple[FieldSpec, ...] = ()  # declared field types
    time_path: tuple[str, ...] = ("timestamp",)  # where a record's time is (timestamp_field)
    time_name: str = "timestamp"  # how a dead letter's reason calls that field


@dataclass(frozen=True, slots=True)
class Decoder:
    rules: IdentityRules
    sources: Mapping[str, SourceSpec]
    max_record_bytes: int
    max_future_ms: int = 600_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoder:
        sources = {
            src.name: SourceSpec(
                index=i,
                settings=src,
                descriptors=tuple(
                    (tuple(path.split(".")), path, ns) for path, ns in src.identities.items()
                ),
                fields=tuple(
                    (tuple(path.split(".")), path, kind) for path, kind in src.fields.items()
                ),
                time_path=src.time_path,
                time_name=_time_name(src),
            )
            for i, src in enumerate(settings.sources)
        }
        return cls(
            IdentityRules.from_settings(settings),
            sources,
            settings.max_record_bytes,
            settings.time.max_future_ms,
        )

    def decode(
        self,
        origin: Origin,
        raw: bytes,
        read_ns: int = 0,
        seq: int = 0,
        written_ms: int | None = None,
        *,
        message_ms: int | None = None,
    ) -> Record | DeadLetter:
        """`seq`: the record's number in its partition's read order, when known.
        `written_ms`: when the record was written (its Kafka message timestamp, else the wall
        clock when read); a record stamped more than `max_future_ms` after it is refused.
        `message_ms`: the Kafka message timestamp (None: a file's record, or none); the time of
        a profile record whose body has none."""
        try:
            return self._decode(origin, raw, read_ns, seq, written_ms, message_ms=message_ms)
        except Rejected as exc:
            return DeadLetter(origin, raw, str(exc))

    def decode_forget(self, origin: Origin, raw: bytes) -> Forget | DeadLetter:
        """A privacy-topic message: `{"identity": "NAMESPACE:VALUE"}`."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return DeadLetter(origin, raw, f"not JSON: {_json_problem(exc)}")
        text = body.get("identity") if isinstance(body, dict) else None
        if not isinstance(text, str) or ":" not in text:
            return DeadLetter(
                origin, raw, 'a privacy command needs {"identity": "NAMESPACE:VALUE"}'
            )
        namespace, value = text.split(":", 1)
        normal = self.rules.normalize(namespace, value)
        if not normal:
            return DeadLetter(origin, raw, "the identity to forget is empty or blocked")
        return Forget(origin, (namespace, normal))

    def _decode(
        self,
        origin: Origin,
        raw: bytes,
        read_ns: int,
        seq: int,
        written_ms: int | None,
        *,
        message_ms: int | None = None,
    ) -> Record:
        spec = self.sources.get(origin.source)
        if spec is None:
            raise Rejected(f"unknown source {origin.source!r}")
        if len(raw) > self.max_record_bytes:
            raise Rejected(
                f"record of {len(raw)} bytes is over the limit of {self.max_record_bytes}"
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Rejected(f"not JSON: {_json_problem(exc)}") from None
        if not isinstance(body, dict):
            raise Rejected(f"a record must be a JSON object, not {_type_name(body)}")
        src = spec.settings
        if spec.fields:
            wrong = coerce_fields(body, spec.fields)
            if wrong is not None:
                raise Rejected(wrong)
        identities = self._identities(spec, body)
        if not identities:
            raise Rejected("no usable identity (none present, or all empty or blocked)")
        ts_ms = _record_time(body, spec)
        if ts_ms is not None and written_ms is not None and ts_ms > written_ms + self.max_future_ms:
            raise Rejected(
                f"timestamp in the future: more than {self.max_future_ms // 1000}s after the "
                "record was written (time.max_future)"
            )
        if ts_ms is None:
            # A profile record with no time of its own: when it was written to its topic, a
            # time that does not depend on how the sources interleave when read (DESIGN §4).
            ts_ms = message_ms
        event_id: str | None = None
        event_type: str | None = None
        if src.kind == "event":
            event_type = body.get("eventType", src.event_type)
            if event_type is None:
                raise Rejected("event has no eventType and its source sets no event_type")
            if not isinstance(event_type, str) or not event_type:
                raise Rejected("eventType must be a non-empty string")
            if "eventType" not in body:
                body["eventType"] = event_type  # our own freshly parsed dict
            event_id = _event_id(body, origin.source)
        return Record(
            origin=origin,
            source_index=spec.index,
            kind=src.kind,
            priority=src.priority,
            identities=identities,
            parsed=body,
            ts_ms=ts_ms,
            event_id=event_id,
            event_type=event_type,
            read_ns=read_ns,
            seq=seq,
            raw=raw,
        )

    def _identities(self, spec: SourceSpec, body: dict[str, Any]) -> tuple[Identity, ...]:
        found: set[Identity] = set()
        identity_map = body.get("identityMap")
        if identity_map is not None:
            if not isinstance(identity_map, dict):
                raise Rejected("identityMap must be an object of namespace -> list of {id}")
            for namespace, entries in identity_map.items():
                if not isinstance(entries, list):
                    raise Rejected(f"identityMap.{_safe(namespace)} must be a list of {{id}}")
                for entry in entries:
                    if not isinstance(entry, dict):
                        raise Rejected(f"identityMap.{_safe(namespace)} entries must be objects")
                    self._add(found, namespace, entry.get("id"), f"identityMap.{namespace}")
        for path, dotted, namespace in spec.descriptors:
            raw = _lookup(body, path)
            if raw is not None:
                self._add(found, namespace, raw, dotted)
        if len(found) == 1:
            return tuple(found)
        return tuple(sorted(found, key=self.rules.sort_key))

    def _add(self, found: set[Identity], namespace: str, raw: Any, where: str) -> None:
        if raw is None:
            return
        if type(raw) is str:
            text = raw
        elif isinstance(raw, bool) or not isinstance(raw, str | int):
            raise Rejected(f"identity at {_safe(where)} must be a string or an integer")
        else:
            text = str(raw)
        if len(text) > self.rules.max_value_length:
            raise Rejected(
                f"identity at {_safe(where)} is {len(text)} characters, "
                f"over the limit of {self.rules.max_value_length}"
            )
        if ":" in namespace or not namespace:
            raise Rejected(f"identity namespace {_safe(namespace)} is not a valid name")
        value = self.rules.normalize(namespace, text)
        if value:
            found.add((namespace, value))


def _lookup(body: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for part in path:
        if type(node) is not dict and not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# Epoch 2000-01-01 in seconds. A number between it and the same instant in milliseconds is a
# recent time in seconds but January 1970 read as milliseconds: the unit is surely wrong.
_Y2K_S = 946_684_800
_SECONDS_AS_MS = range(_Y2K_S, _Y2K_S * 1000)
_MS_AS_SECONDS = 100_000_000_000  # seconds past year 5138: surely milliseconds


def _time_name(src: SourceSettings) -> str:
    field = src.timestamp_field
    return "timestamp" if field is None else f"timestamp_field {_safe(field)}"


def _record_time(body: Mapping[str, Any], spec: SourceSpec) -> int | None:
    """The time in the record's body: its `timestamp`, or the source's `timestamp_field`
    (missing or null: None for a profile record, a dead letter for an event)."""
    path, src = spec.time_path, spec.settings
    value = body.get(path[0]) if len(path) == 1 else _lookup(body, path)
    if value is None and src.kind == "event":
        where = "" if src.timestamp_field is None else f" ({spec.time_name})"
        raise Rejected(f"event has no timestamp{where}")
    return _timestamp(value, src.timestamp_unit, spec.time_name)


def _timestamp(value: Any, unit: str, name: str = "timestamp") -> int | None:
    """`name`: how a reason calls the field ("timestamp", "timestamp_field a.b"), never its
    value."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Rejected(f"{name} must be an ISO-8601 string or an epoch number")
    if isinstance(value, int | float):
        return _epoch_ms(value, unit, name)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise Rejected(f"{name} is not ISO-8601") from None
        if dt.tzinfo is None:  # naive times in retail exports are UTC in practice
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    raise Rejected(f"{name} must be an ISO-8601 string or an epoch number")


def _epoch_ms(value: float, unit: str, name: str) -> int:
    """A numeric timestamp in the source's stated unit, refused when it reads as the other."""
    if not math.isfinite(value):
        raise Rejected(f"{name} is not a finite number")
    if unit == "s":
        if abs(value) >= _MS_AS_SECONDS:
            raise Rejected(
                f"{name} is implausible in seconds (it reads as epoch milliseconds): "
                "check the source's timestamp_unit"
            )
        return int(value * 1000)
    if int(value) in _SECONDS_AS_MS:
        raise Rejected(
            f"{name} is implausible in milliseconds (it reads as epoch seconds): "
            "set the source's timestamp_unit to s"
        )
    return int(value)


def _event_id(body: Mapping[str, Any], source: str) -> str:
    given = body.get("_id")
    if isinstance(given, str) and given:
        return given
    if given is not None and not isinstance(given, str):
        raise Rejected("_id must be a string")
    # No id: derive a stable one from the content, so a replay deduplicates the same way.
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "d_" + hashlib.sha256(source.encode() + b"\0" + canonical).hexdigest()[:32]


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    return f"{exc.msg} at byte {exc.pos}"


def _type_name(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "a scalar"
    )


def _safe(name: Any) -> str:
    """A field name fit for a reason: printable, short (never a value)."""
    text = str(name)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 64 else text[:61] + "..."
