"""Typed, frozen values that flow between the steps.

The per-event path uses these slotted dataclasses (validated once, in decode), not pydantic:
pydantic stays at the edges (settings, outputs).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
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

    def __reduce__(self) -> tuple[Any, ...]:  # pickled between processes: faster than default
        return (Origin, (self.source, self.partition, self.offset))


@dataclass(frozen=True, slots=True)
class Record:
    origin: Origin
    source_index: int
    kind: Literal["event", "profile"]
    priority: int
    identities: tuple[Identity, ...]  # normalised, deduplicated, best first
    parsed: dict[str, Any] | None  # the body once parsed (None: not yet, see `body`)
    # The record's own time. An event's is its event time. A profile record's (its body time,
    # else its Kafka message timestamp; None for a file's record without one) orders its
    # attributes and stamps its changes, but never moves event time (`Positions.observe`).
    ts_ms: int | None
    event_id: str | None
    event_type: str | None
    read_ns: int = 0  # wall clock when the pipeline read it (latency measurement only)
    seq: int = 0  # 1, 2, 3 … per partition in read order, this run (0: not stamped)
    raw: bytes = b""  # the JSON it was decoded from (b"": made from `parsed` alone)

    @property
    def body(self) -> dict[str, Any]:
        """The parsed record; events always carry `eventType`; never mutated. A record that
        crossed processes travels as its raw JSON and is parsed again here, on first use:
        the identity step never needs the body, and bytes pickle for almost nothing."""
        parsed = self.parsed
        if parsed is None:
            parsed = body_of(self.raw, self.kind, self.event_type)
            object.__setattr__(self, "parsed", parsed)
        return parsed

    def __reduce__(self) -> tuple[Any, ...]:
        """Between processes: the raw JSON rather than the parsed body (a nested dict costs
        ~6 µs to unpickle, bytes nothing), unless there is no raw JSON."""
        o = self.origin
        wire = (
            o.source, o.partition, o.offset, self.source_index, self.kind, self.priority,
            self.identities, self.raw or self.body, self.ts_ms, self.event_id, self.event_type,
            self.read_ns, self.seq,
        )  # fmt: skip
        return (_record_from_wire, (wire,))

    @property
    def order(self) -> tuple[int, int, int, int]:
        """The "later record wins" key: the record's time where it has one, else its place in
        its source (source, partition, offset): never the order the sources were read in."""
        o = self.origin
        return (-1 if self.ts_ms is None else self.ts_ms, self.source_index, o.partition, o.offset)


def body_of(raw: bytes, kind: str, event_type: str | None) -> dict[str, Any]:
    """A record's body from its raw JSON, as decode made it (an event's `eventType` is set)."""
    body: dict[str, Any] = orjson.loads(raw)
    if kind == "event" and "eventType" not in body:
        body["eventType"] = event_type
    return body


def _record_from_wire(wire: tuple[Any, ...]) -> Record:
    """`Record.__reduce__`'s fields back into a record (the body as raw JSON, or parsed)."""
    source, partition, offset, *rest = wire
    body = rest[4]
    raw, parsed = (body, None) if isinstance(body, bytes) else (b"", body)
    return Record(
        Origin(source, partition, offset), rest[0], rest[1], rest[2], rest[3], parsed,
        rest[5], rest[6], rest[7], rest[8], rest[9], raw,
    )  # fmt: skip


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
    # What the destinations asked to personalize with (`operators.payloads`): `attributes`,
    # `traits`, `event`; each destination gets its own part (not in `to_dict`). None: none asked.
    payload: dict[str, Any] | None = None

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
            self.payload,
        ]

    @classmethod
    def from_stored(cls, data: list[Any]) -> AudienceChange:
        """Also the 11 fields an outbox written before payloads holds (no payload)."""
        return cls(*data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (AudienceChange.from_stored, (self.to_stored(),))


@dataclass(frozen=True, slots=True)
class ProfileDocument:
    """One profile's whole current document for the profile projection (DESIGN §11): live, a
    merged-away profile's forward (`merged_into`), or a forgotten one's `deleted` record. Its
    `as_of.seq` grows per profile: a reader keeps the highest."""

    profile_id: str
    document: dict[str, Any]
    read_ns: int = 0  # when the record that caused it was read (latency; not in the JSON)

    @property
    def deleted(self) -> bool:
        return bool(self.document.get("deleted"))

    def to_stored(self) -> dict[str, Any]:
        return {"cmd": "profile", "doc": self.document, "read_ns": self.read_ns}

    def __reduce__(self) -> tuple[Any, ...]:
        return (ProfileDocument, (self.profile_id, self.document, self.read_ns))


@dataclass(frozen=True, slots=True)
class JourneySend:
    """One message a journey step sends (DESIGN §12) to the destination it names. `id` is
    deterministic (journey, version, instance, step): a replay or a crash re-emits the same id,
    so the message is sent once. `payload` is what the destination asked to personalize with
    (`attributes`, `traits`, `event`: the event that started the instance)."""

    id: str
    journey_id: str
    version: str
    instance_id: str
    step: str
    message: str
    destination: str
    profile_id: str
    identities: dict[str, list[str]]
    event_time_ms: int
    emitted_at_ms: int
    payload: dict[str, Any] | None = None
    read_ns: int = 0  # when the record that caused it was read; 0 for timers (not in the JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "journey_send",
            "journey_id": self.journey_id,
            "version": self.version,
            "instance_id": self.instance_id,
            "step": self.step,
            "message": self.message,
            "profile_id": self.profile_id,
            "identities": self.identities,
            "event_time": iso_ms(self.event_time_ms),
            "emitted_at": iso_ms(self.emitted_at_ms),
        }

    def to_stored(self) -> dict[str, Any]:
        return {
            "cmd": "send",
            "s": [
                self.id, self.journey_id, self.version, self.instance_id, self.step,
                self.message, self.destination, self.profile_id, self.identities,
                self.event_time_ms, self.emitted_at_ms, self.payload, self.read_ns,
            ],
        }  # fmt: skip

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> JourneySend:
        return cls(*data["s"])

    def __reduce__(self) -> tuple[Any, ...]:
        return (JourneySend.from_stored, (self.to_stored(),))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds -> `2020-08-11T00:00:00Z` (milliseconds shown only when non-zero).
    Two per audience change: the date comes from a cache, the time of day by arithmetic."""
    seconds, frac = divmod(ms, 1000)
    day, second = divmod(seconds, 86_400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    if frac:
        return f"{_iso_date(day)}T{hour:02d}:{minute:02d}:{second:02d}.{frac:03d}Z"
    return f"{_iso_date(day)}T{hour:02d}:{minute:02d}:{second:02d}Z"


@lru_cache(maxsize=1 << 12)
def _iso_date(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- several processes: what the identity step sends the profile step, and the feedback topic --
#
# With several processes the identity graph is applied by one Bytewax key (`graph`), which sees
# every record in order, and profiles live on shard keys spread over the processes. The graph
# step's outputs carry its output sequence `seq`, so a profile step skips what it has applied
# when they are sent again after a crash. `Adopt` is what a profile step sends another one, which
# Bytewax cannot do without a cycle: it goes through the feedback Kafka topic.


def record_to_stored(r: Record) -> list[Any]:
    o = r.origin
    return [
        o.source, o.partition, o.offset, r.source_index, r.kind, r.priority,
        [list(i) for i in r.identities], r.raw.decode() if r.raw else r.body, r.ts_ms,
        r.event_id, r.event_type, r.read_ns, r.seq,
    ]  # fmt: skip


def record_from_stored(d: list[Any]) -> Record:
    """The body was stored as the raw JSON text, or parsed (records made without raw JSON)."""
    body = d[7].encode() if isinstance(d[7], str) else d[7]
    return _record_from_wire((*d[:6], tuple((i[0], i[1]) for i in d[6]), body, *d[8:13]))


def _ids(members: Any) -> tuple[Identity, ...]:
    return tuple((m[0], m[1]) for m in members)


@dataclass(frozen=True, slots=True)
class Routed:
    """A record and the cluster it belongs to, after the graph applied it."""

    seq: int
    canonical: Identity
    members: tuple[Identity, ...]  # the cluster after this record
    event_ms: int | None  # the graph step's event time (watermark) at this record
    record: Record

    def __reduce__(self) -> tuple[Any, ...]:
        return (Routed, (self.seq, self.canonical, self.members, self.event_ms, self.record))

    def to_stored(self) -> dict[str, Any]:
        return {
            "cmd": "routed",
            "seq": self.seq,
            "canonical": list(self.canonical),
            "members": [list(m) for m in self.members],
            "event_ms": self.event_ms,
            "record": record_to_stored(self.record),
        }


@dataclass(frozen=True, slots=True)
class Move:
    """The cluster `loser` merged into `survivor`: the loser's profile must move there."""

    seq: int
    loser: Identity
    survivor: Identity
    members: tuple[Identity, ...]  # the merged cluster
    merge_id: str
    at_ms: int
    event_ms: int | None

    def to_stored(self) -> dict[str, Any]:
        return {
            "cmd": "move",
            "seq": self.seq,
            "loser": list(self.loser),
            "survivor": list(self.survivor),
            "members": [list(m) for m in self.members],
            "merge_id": self.merge_id,
            "at_ms": self.at_ms,
            "event_ms": self.event_ms,
        }


@dataclass(frozen=True, slots=True)
class Drop:
    """GDPR delete: the cluster `canonical` is gone from the graph; its profile must go."""

    seq: int
    canonical: Identity
    members: tuple[Identity, ...]
    at_ms: int

    def to_stored(self) -> dict[str, Any]:
        return {
            "cmd": "drop",
            "seq": self.seq,
            "canonical": list(self.canonical),
            "members": [list(m) for m in self.members],
            "at_ms": self.at_ms,
        }


@dataclass(frozen=True, slots=True)
class Kick:
    """Start (or go on with) the rollout of edited audiences over one shard's profiles (None:
    every profile of the store, when one key applies them all). DESIGN §13."""

    shard: int | None
    key: str  # the Bytewax key it goes to


@dataclass(frozen=True, slots=True)
class Tick:
    """Event time for one shard key (end of a replay: every timer up to it fires)."""

    seq: int
    shard: int
    event_ms: int

    def to_stored(self) -> dict[str, Any]:
        return {"cmd": "tick", "seq": self.seq, "shard": self.shard, "event_ms": self.event_ms}


@dataclass(frozen=True, slots=True)
class Adopt:
    """A moved profile for `survivor` to merge in (idempotent by `merge_id`). `origin` is its
    place in the feedback topic once read back (None while on its way out)."""

    survivor: Identity
    members: tuple[Identity, ...]
    merge_id: str
    profile: dict[str, Any]
    at_ms: int
    origin: Origin | None = None

    def to_stored(self) -> dict[str, Any]:
        return {
            "cmd": "adopt",
            "survivor": list(self.survivor),
            "members": [list(m) for m in self.members],
            "merge_id": self.merge_id,
            "profile": self.profile,
            "at_ms": self.at_ms,
        }


GraphOutput = Routed | Move | Drop | Tick
Command = GraphOutput | Adopt


def command_from_stored(d: dict[str, Any], origin: Origin | None = None) -> Command:
    kind = d["cmd"]
    if kind == "routed":
        return Routed(
            d["seq"],
            (d["canonical"][0], d["canonical"][1]),
            _ids(d["members"]),
            d["event_ms"],
            record_from_stored(d["record"]),
        )
    if kind == "move":
        return Move(
            d["seq"],
            (d["loser"][0], d["loser"][1]),
            (d["survivor"][0], d["survivor"][1]),
            _ids(d["members"]),
            d["merge_id"],
            d["at_ms"],
            d["event_ms"],
        )
    if kind == "drop":
        return Drop(
            d["seq"], (d["canonical"][0], d["canonical"][1]), _ids(d["members"]), d["at_ms"]
        )
    if kind == "tick":
        return Tick(d["seq"], d["shard"], d["event_ms"])
    if kind == "adopt":
        return Adopt(
            (d["survivor"][0], d["survivor"][1]),
            _ids(d["members"]),
            d["merge_id"],
            d["profile"],
            d["at_ms"],
            origin,
        )
    raise ValueError(f"unknown command {kind!r}")


def output_from_stored(
    data: Any,
) -> AudienceChange | ProfileDocument | JourneySend | Command:
    """An outbox entry: an audience change (a list), a profile document, a journey's send or
    a command (a dict)."""
    if isinstance(data, dict):
        if data["cmd"] == "profile":
            doc = data["doc"]
            return ProfileDocument(doc["profile_id"], doc, data.get("read_ns", 0))
        if data["cmd"] == "send":
            return JourneySend.from_stored(data)
        return command_from_stored(data)
    return AudienceChange.from_stored(data)
