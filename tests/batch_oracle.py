"""An independent batch evaluator for "stream = batch" (DESIGN §5).

Written without `operators.rules`, `operators.aggregates` or any other engine module: it reads
the config YAML and the source files itself, takes the final clusters from `cdp export`, gives
every record to the profile holding the record's highest-priority identity, merges the profile
records' attributes with the DESIGN §4 policy, and evaluates each segment as a plain Python
predicate over the whole profile (all of its attributes and events) at one `now` — the last
event time. Nothing is incremental here: no windows kept, no pruning, no timers.

Rule semantics, as DESIGN §5 and the rule language's documented choices state them:

* a path yields every value reached through objects and lists (flattened); null is missing;
* a comparison is true when any left value passes against the right; values of different kinds
  (bool, number, string) never compare; no value makes every comparison false, ``!=`` included;
* ``within=D`` keeps events with time in ``(now - D, now]``;
* ``sum``/``min``/``max`` read numbers only; ``sum`` of nothing is 0, ``min``/``max`` of
  nothing is null; ``last`` is the value of the matching event with the greatest time that has
  one (ties: the greatest JSON encoding);
* ``absent(B, after=A, within=D)``: the latest A is at least D old and no B has a time in
  ``(tA, tA + D]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from config.settings import DEFAULT_BLOCKED

Identity = tuple[str, str]
Json = dict[str, Any]
EventFilter = Callable[[Json], bool]
Rule = Callable[["View"], bool]
SKIPPED_TOP_LEVEL = ("identityMap", "_id", "timestamp")  # record metadata, not attributes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DEFAULT_BLOCKED = DEFAULT_BLOCKED  # a setting's value, not engine logic


# ------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class Source:
    index: int
    name: str
    kind: str
    path: Path
    priority: int
    identities: tuple[tuple[str, str], ...]  # (dotted field path, namespace)
    event_type: str | None
    time_field: str = "timestamp"  # the source's `timestamp_field`


@dataclass(frozen=True)
class OracleConfig:
    namespaces: tuple[str, ...]  # priority order, highest first
    normalizers: Mapping[str, str]
    blocked_exact: frozenset[str]
    blocked_patterns: tuple[re.Pattern[str], ...]
    sources: tuple[Source, ...]

    @classmethod
    def from_yaml(cls, path: Path) -> OracleConfig:
        raw = yaml.safe_load(path.read_text())
        namespaces = tuple(ns["name"] for ns in raw["namespaces"])
        normalizers = {ns["name"]: ns.get("normalize", "none") for ns in raw["namespaces"]}
        blocked = (raw.get("identity") or {}).get("blocked_values", _DEFAULT_BLOCKED)
        regexes = [b for b in blocked if b.startswith("^") or b.endswith("$")]
        sources = tuple(
            Source(
                index=i,
                name=s["name"],
                kind=s["kind"],
                path=path.parent / s["path"],
                priority=int(s.get("priority", 0)),
                identities=tuple((s.get("identities") or {}).items()),
                event_type=s.get("event_type"),
                time_field=s.get("timestamp_field") or "timestamp",
            )
            for i, s in enumerate(raw["sources"])
            if s.get("path")
        )
        return cls(
            namespaces=namespaces,
            normalizers=normalizers,
            blocked_exact=frozenset(b.lower() for b in blocked if b not in regexes),
            blocked_patterns=tuple(re.compile(r, re.IGNORECASE) for r in regexes),
            sources=sources,
        )

    def normalise(self, namespace: str, raw: str) -> str | None:
        """Email: trimmed, lower case. Phone: the digits, a leading + kept. Else trimmed.
        None when the value (as given or normalised) is empty or blocked."""
        given = raw.strip()
        kind = self.normalizers.get(namespace, "none")
        if kind == "email":
            value = given.lower()
        elif kind == "phone":
            digits = "".join(ch for ch in given if ch.isdigit())
            value = "+" + digits if given.startswith("+") and digits else digits
        elif kind == "lower":
            value = given.lower()
        else:
            value = given
        for candidate in (value, given):
            if candidate.lower() in self.blocked_exact:
                return None
            if any(p.fullmatch(candidate) for p in self.blocked_patterns):
                return None
        return value

    def rank(self, identity: Identity) -> tuple[int, str, str]:
        """Listed namespaces by their order, then unlisted ones by name; then the value."""
        ns, value = identity
        position = self.namespaces.index(ns) if ns in self.namespaces else len(self.namespaces)
        return (position, ns, value)


# ----------------------------------------------------------------------------- the records


@dataclass(frozen=True)
class RawRecord:
    source: Source
    position: int  # index in a JSON array, or line number in JSON lines
    body: Json
    ts_ms: int | None
    identities: tuple[Identity, ...]

    @property
    def primary(self) -> Identity:
        return self.identities[0]


def _file_items(path: Path) -> Iterable[tuple[int, Any]]:
    text = path.read_text()
    if text.lstrip().startswith("["):
        yield from enumerate(json.loads(text))
        return
    for number, line in enumerate(text.split("\n")):
        if line.strip():
            yield number, json.loads(line)


def _dig(body: Any, dotted: str) -> Any:
    node = body
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _epoch_ms(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


def _identities(config: OracleConfig, source: Source, body: Json) -> tuple[Identity, ...]:
    found: set[Identity] = set()
    candidates: list[tuple[str, Any]] = []
    for namespace, entries in (body.get("identityMap") or {}).items():
        candidates.extend((namespace, entry.get("id")) for entry in entries)
    candidates.extend((ns, _dig(body, dotted)) for dotted, ns in source.identities)
    for namespace, raw in candidates:
        if raw is None or isinstance(raw, bool):
            continue
        value = config.normalise(namespace, str(raw))
        if value:
            found.add((namespace, value))
    return tuple(sorted(found, key=config.rank))


def read_records(config: OracleConfig) -> list[RawRecord]:
    """Every usable record of every source file, in reading order (sources in config order).
    Records with no usable identity, and events with no time, are no input (dead letters)."""
    out: list[RawRecord] = []
    for source in config.sources:
        for position, item in _file_items(source.path):
            if not isinstance(item, dict):
                continue
            identities = _identities(config, source, item)
            ts_ms = _epoch_ms(_dig(item, source.time_field))
            if not identities or (source.kind == "event" and ts_ms is None):
                continue
            body = item
            if source.kind == "event" and "eventType" not in item:
                body = {**item, "eventType": source.event_type}
            out.append(RawRecord(source, position, body, ts_ms, identities))
    return out


# ------------------------------------------------------------------------ attribute policy


def _leaves(body: Json, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in body.items():
        if not prefix and key in SKIPPED_TOP_LEVEL:
            continue
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        elif value is not None:
            yield f"{prefix}{key}", value


def merged_attributes(records: Sequence[RawRecord]) -> dict[str, Any]:
    """Per field path: the higher-priority source wins; between equal priorities the later
    record (event time where it has one, else sources in config order, then file position);
    nulls never overwrite. Applied in that order, the last writer of a path is its winner."""

    def rank(r: RawRecord) -> tuple[int, int, int, int, int]:
        has_time = 0 if r.ts_ms is None else 1
        return (r.source.priority, has_time, r.ts_ms or 0, r.source.index, r.position)

    flat: dict[str, Any] = {}
    for record in sorted(records, key=rank):
        for path, value in _leaves(record.body):
            flat[path] = value
    return flat


def nest(flat: Mapping[str, Any]) -> Json:
    out: Json = {}
    for path in sorted(flat):
        node = out
        *heads, last = path.split(".")
        for part in heads:
            node = node.setdefault(part, {})
        node[last] = flat[path]
    return out


# -------------------------------------------------------------------------- rule semantics


def parse_duration(text: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text)
    if match is None:
        raise ValueError(f"bad duration {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def values(obj: Any, path: str) -> list[Any]:
    """Every value at a dotted path, through lists at any depth; null and missing give none."""
    current = [obj]
    for part in path.split("."):
        found: list[Any] = []
        for node in current:
            if isinstance(node, dict):
                found.extend(_flat_list(node.get(part)))
        current = found
    return current


def _flat_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flat_list(item)]
    return [value]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _as_values(x: Any) -> list[Any]:
    return x if isinstance(x, list) else _flat_list(x)


def eq(x: Any, const: Any) -> bool:
    return any(_kind(v) == _kind(const) and v == const for v in _as_values(x))


def ne(x: Any, const: Any) -> bool:
    return any(_kind(v) == _kind(const) and v != const for v in _as_values(x))


def _ordered(x: Any, const: Any, test: Callable[[Any, Any], bool]) -> bool:
    kind = _kind(const)
    assert kind in ("number", "string")
    return any(_kind(v) == kind and test(v, const) for v in _as_values(x))


def lt(x: Any, const: Any) -> bool:
    return _ordered(x, const, lambda a, b: a < b)


def le(x: Any, const: Any) -> bool:
    return _ordered(x, const, lambda a, b: a <= b)


def gt(x: Any, const: Any) -> bool:
    return _ordered(x, const, lambda a, b: a > b)


def ge(x: Any, const: Any) -> bool:
    return _ordered(x, const, lambda a, b: a >= b)


def isin(x: Any, options: Sequence[Any]) -> bool:
    return any(eq(x, option) for option in options)


def contains(x: Any, const: Any) -> bool:
    for v in _as_values(x):
        if isinstance(v, str) and isinstance(const, str):
            if const in v:
                return True
        elif _kind(v) == _kind(const) and v == const:
            return True
    return False


def startswith(x: Any, const: str) -> bool:
    return any(isinstance(v, str) and v.startswith(const) for v in _as_values(x))


def iequals(x: Any, const: str) -> bool:
    """Case-insensitive ==, strings only (casefold: "Straße" iequals "STRASSE")."""
    return any(isinstance(v, str) and v.casefold() == const.casefold() for v in _as_values(x))


def icontains(x: Any, const: str) -> bool:
    return any(isinstance(v, str) and const.casefold() in v.casefold() for v in _as_values(x))


def is_null(x: Any) -> bool:
    return not _as_values(x)


def event_is(event_type: str) -> EventFilter:
    return lambda e: eq(values(e, "eventType"), event_type)


def _numbers(vs: Iterable[Any]) -> list[int | float]:
    return [v for v in vs if _kind(v) == "number" and math.isfinite(v)]


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class View:
    """One profile at one `now`, as a rule sees it."""

    attributes: Json
    events: list[tuple[int, Json]]  # (time, event), every event of the profile
    now_ms: int
    rules: Mapping[str, Rule] = field(repr=False)
    memo: dict[str, bool] = field(default_factory=dict)

    def in_segment(self, segment_id: str) -> bool:
        """Computed on demand: a segment of segments needs no evaluation order."""
        if segment_id not in self.memo:
            self.memo[segment_id] = bool(self.rules[segment_id](self))
        return self.memo[segment_id]

    def profile(self, path: str) -> list[Any]:
        return values(self.attributes, path)

    def matching(self, match: EventFilter, within: str | None = None) -> list[tuple[int, Json]]:
        start = None if within is None else self.now_ms - parse_duration(within)
        return [
            (ts, e)
            for ts, e in self.events
            if ts <= self.now_ms and (start is None or ts > start) and match(e)
        ]

    def exists(self, match: EventFilter, within: str | None = None) -> bool:
        return bool(self.matching(match, within))

    def count(self, match: EventFilter, within: str | None = None) -> int:
        return len(self.matching(match, within))

    def sum(self, path: str, match: EventFilter, within: str | None = None) -> float:
        nums = [n for _, e in self.matching(match, within) for n in _numbers(values(e, path))]
        return math.fsum(nums) if any(isinstance(n, float) for n in nums) else sum(nums)

    def min(self, path: str, match: EventFilter, within: str | None = None) -> Any:
        nums = [n for _, e in self.matching(match, within) for n in _numbers(values(e, path))]
        return min(nums) if nums else None

    def max(self, path: str, match: EventFilter, within: str | None = None) -> Any:
        nums = [n for _, e in self.matching(match, within) for n in _numbers(values(e, path))]
        return max(nums) if nums else None

    def last(self, path: str, match: EventFilter, within: str | None = None) -> Any:
        best: tuple[int, str] | None = None
        value: Any = None
        for ts, e in self.matching(match, within):
            for v in values(e, path):
                key = (ts, _json_key(v))
                if best is None or key > best:
                    best, value = key, v
        return value

    def absent(self, missing: EventFilter, after: EventFilter, within: str) -> bool:
        span = parse_duration(within)
        a_times = [ts for ts, e in self.events if ts <= self.now_ms and after(e)]
        if not a_times:
            return False
        t_a = max(a_times)
        if self.now_ms - t_a < span:
            return False
        return not any(t_a < ts <= t_a + span and missing(e) for ts, e in self.events)


# ---------------------------------------------------------------------------- the evaluation


@dataclass
class BatchProfile:
    profile_id: str
    records: list[RawRecord] = field(default_factory=list)

    @property
    def events(self) -> list[tuple[int, Json]]:
        return [
            (r.ts_ms, r.body)
            for r in self.records
            if r.source.kind == "event" and r.ts_ms is not None
        ]

    @property
    def profile_records(self) -> list[RawRecord]:
        return [r for r in self.records if r.source.kind == "profile"]


@dataclass
class BatchResult:
    now_ms: int
    members: dict[str, set[str]]  # segment id -> profile ids
    attributes: dict[str, Json]  # profile id -> merged attributes (nested)
    event_counts: dict[str, int]
    unplaced: list[RawRecord]  # records whose primary identity is in no exported profile


def assign(
    config: OracleConfig, exported: Iterable[Mapping[str, Any]], records: Iterable[RawRecord]
) -> tuple[dict[str, BatchProfile], list[RawRecord]]:
    """Each record goes to the profile whose cluster holds its highest-priority identity.
    Events are deduplicated by `_id` (the first read is kept)."""
    owner: dict[Identity, str] = {}
    profiles: dict[str, BatchProfile] = {}
    for doc in exported:
        pid = doc["profile_id"]
        profiles[pid] = BatchProfile(pid)
        for namespace, vals in doc["identities"].items():
            for value in vals:
                assert (namespace, value) not in owner, f"{namespace}:{value} in two profiles"
                owner[(namespace, value)] = pid
    seen_ids: set[str] = set()
    unplaced: list[RawRecord] = []
    for record in records:
        if record.source.kind == "event":
            event_id = record.body.get("_id")
            if isinstance(event_id, str) and event_id:
                if event_id in seen_ids:
                    continue
                seen_ids.add(event_id)
        pid = owner.get(record.primary)
        if pid is None:
            unplaced.append(record)
        else:
            profiles[pid].records.append(record)
    return profiles, unplaced


def evaluate(
    config_path: Path, exported: Sequence[Mapping[str, Any]], rules: Mapping[str, Rule]
) -> BatchResult:
    """Memberships of every exported profile in every segment at now = the last event time."""
    config = OracleConfig.from_yaml(config_path)
    records = read_records(config)
    now_ms = max(r.ts_ms for r in records if r.source.kind == "event" and r.ts_ms is not None)
    profiles, unplaced = assign(config, exported, records)
    members: dict[str, set[str]] = {sid: set() for sid in rules}
    attributes: dict[str, Json] = {}
    counts: dict[str, int] = {}
    for pid, prof in profiles.items():
        attrs = nest(merged_attributes(prof.profile_records))
        attributes[pid] = attrs
        events = prof.events
        counts[pid] = len(events)
        view = View(attrs, events, now_ms, rules)
        for sid in rules:
            if view.in_segment(sid):
                members[sid].add(pid)
    return BatchResult(now_ms, members, attributes, counts, unplaced)
