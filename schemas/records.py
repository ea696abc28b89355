"""Typed, frozen values that flow between the steps.

The per-event path uses these slotted dataclasses (validated once, in decode), not pydantic:
pydantic stays at the edges (settings, outputs).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

Identity = tuple[str, str]  # (namespace, normalised value)


def identity_str(identity: Identity) -> str:
    """`("Email", "a@b.c")` -> `"Email:a@b.c"`; namespaces never contain ':'."""
    return f"{identity[0]}:{identity[1]}"


def parse_identity(text: str) -> Identity:
    namespace, sep, value = text.partition(":")
    if not sep or not namespace or not value:
        raise ValueError(f"identity {text!r} must look like NAMESPACE:VALUE")
    return namespace, value


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: a source, a partition (0 for files) and an offset."""

    source: str
    partition: int
    offset: int

    @property
    def position(self) -> str:
        return f"{self.source}:{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Record:
    origin: Origin
    source_index: int
    kind: Literal["event", "profile"]
    priority: int
    identities: tuple[Identity, ...]  # normalised, deduplicated, best first
    body: dict[str, Any]  # the parsed record; events always carry `eventType`; never mutated
    ts_ms: int | None
    event_id: str | None
    event_type: str | None
    read_ns: int = 0  # wall clock when the pipeline read it (latency measurement only)
    seq: int = 0  # 1, 2, 3 … per partition in read order, this run (0: not stamped)

    def with_seq(self, seq: int) -> Record:
        """This record with its read-order number (faster than dataclasses.replace)."""
        return Record(
            self.origin,
            self.source_index,
            self.kind,
            self.priority,
            self.identities,
            self.body,
            self.ts_ms,
            self.event_id,
            self.event_type,
            self.read_ns,
            seq,
        )

    @property
    def order(self) -> tuple[int, int, int, int]:
        """The "later record wins" key: event time where there is one, else arrival order."""
        o = self.origin
        return (-1 if self.ts_ms is None else self.ts_ms, self.source_index, o.partition, o.offset)


@dataclass(frozen=True, slots=True)
class Forget:
    """A GDPR delete command from the privacy topic: forget the person holding `identity`."""

    origin: Origin
    identity: Identity


@dataclass(frozen=True, slots=True)
class DeadLetter:
    origin: Origin
    raw: bytes
    reason: str  # never contains the record's values (no personal data in logs)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.origin.source,
                "partition": self.origin.partition,
                "offset": self.origin.offset,
                "reason": self.reason,
                "raw_base64": base64.b64encode(self.raw).decode("ascii"),
            }
        )


@dataclass(frozen=True, slots=True)
class AudienceChange:
    id: str
    segment_id: str
    status: Literal["entered", "exited"]
    profile_id: str
    identities: dict[str, list[str]]
    event_time_ms: int
    emitted_at_ms: int
    reason: str
    sequence: int  # the n-th transition of (profile, segment): odd entered, even exited
    read_ns: int = 0  # when the record that caused it was read; 0 for timers (not in the JSON)
    consent_denied: bool = False  # the profile's consent attribute says no (not in the JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "segment_id": self.segment_id,
            "status": self.status,
            "profile_id": self.profile_id,
            "identities": self.identities,
            "event_time": iso_ms(self.event_time_ms),
            "emitted_at": iso_ms(self.emitted_at_ms),
            "reason": self.reason,
            "sequence": self.sequence,
        }

    def to_stored(self) -> list[Any]:
        return [
            self.id,
            self.segment_id,
            self.status,
            self.profile_id,
            self.identities,
            self.event_time_ms,
            self.emitted_at_ms,
            self.reason,
            self.sequence,
            self.read_ns,
            self.consent_denied,
        ]

    @classmethod
    def from_stored(cls, data: list[Any]) -> AudienceChange:
        return cls(*data)


def iso_ms(ms: int) -> str:
    """Epoch milliseconds -> `2020-08-11T00:00:00Z` (milliseconds shown only when non-zero)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ms % 1000
    return f"{text}.{frac:03d}Z" if frac else f"{text}Z"
