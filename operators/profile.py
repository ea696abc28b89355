"""The profile of one cluster, as pure functions over a JSON-shaped dict.

```
{"attrs":  {"person.name.firstName": "Danny", ...},        merged leaf values
 "meta":   {"person.name.firstName": [20, -1, 0, 0, 0]},    winner: [priority, *record.order]
 "aggs":   {AGG_KEY: state},  "abs": {ABSENT_KEY: state},   rule inputs (operators.aggregates)
 "events": [count, first_ms, last_ms] | None,
 "segs":   {SEGMENT_ID: [in_segment, since_ms, transitions]},
 "timer":  ms | None}                                        the scheduled re-evaluation
```
Attribute merge policy (DESIGN §4): per field path the higher-priority source wins; between
equal priorities the later record wins (event time where it has one, else arrival order). Nulls
never overwrite. Every function returns a new dict and leaves its arguments alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from operators.aggregates import (
    absent_add,
    absent_init,
    absent_merge,
    absent_next_change,
    absent_prune,
    agg_add,
    agg_init,
    agg_merge,
    agg_next_change,
    agg_prune,
)
from operators.rules import Absent, Aggregate, event_values
from schemas.records import Record

Profile = dict[str, Any]
SKIP_ATTRIBUTES = frozenset({"identityMap", "_id", "timestamp"})


def new_profile() -> Profile:
    return {
        "attrs": {},
        "meta": {},
        "aggs": {},
        "abs": {},
        "events": None,
        "segs": {},
        "timer": None,
    }


def flatten(body: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaf paths of nested objects; lists are leaves; nulls and empty objects are skipped."""
    for key, value in body.items():
        if not prefix and key in SKIP_ATTRIBUTES:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, path + ".")
        elif value is not None:
            yield path, value


def apply_attributes(profile: Profile, record: Record) -> tuple[Profile, frozenset[str]]:
    """Merge a profile record's fields; returns the new profile and the paths that changed."""
    rank = [record.priority, *record.order]
    attrs = profile["attrs"]
    meta = profile["meta"]
    new_attrs: dict[str, Any] | None = None
    new_meta: dict[str, Any] | None = None
    changed: set[str] = set()
    for path, value in flatten(record.body):
        held = meta.get(path)
        if held is not None and held >= rank:
            continue
        if new_attrs is None or new_meta is None:
            new_attrs, new_meta = dict(attrs), dict(meta)
        new_meta[path] = rank
        if attrs.get(path) != value:
            new_attrs[path] = value
            changed.add(path)
    if new_attrs is None:
        return profile, frozenset()
    return {**profile, "attrs": new_attrs, "meta": new_meta}, frozenset(changed)


def apply_event(
    profile: Profile,
    record: Record,
    aggregates: Sequence[Aggregate],
    absents: Sequence[Absent],
) -> tuple[Profile, frozenset[str]]:
    """Count the event and feed it to the aggregates it matches (candidates chosen by the caller
    from its event type). Returns the new profile and the keys of the inputs that changed."""
    ts = record.ts_ms
    assert ts is not None, "events always have a time (decode guarantees it)"
    event = record.body
    count, first, last = profile["events"] or (0, ts, ts)
    out = {**profile, "events": [count + 1, min(first, ts), max(last, ts)]}
    changed: set[str] = set()
    aggs: dict[str, Any] | None = None
    for agg in aggregates:
        if agg.matches(event):
            if aggs is None:
                aggs = dict(profile["aggs"])
            aggs[agg.key] = agg_add(
                aggs[agg.key] if agg.key in aggs else agg_init(agg), agg, ts, event
            )
            changed.add(agg.key)
    if aggs is not None:
        out["aggs"] = aggs
    abs_states: dict[str, Any] | None = None
    for absent in absents:
        if absent.after(event) or absent.missing(event):
            if abs_states is None:
                abs_states = dict(profile["abs"])
            state = abs_states[absent.key] if absent.key in abs_states else absent_init(absent)
            abs_states[absent.key] = absent_add(state, absent, ts, event)
            changed.add(absent.key)
    if abs_states is not None:
        out["abs"] = abs_states
    return out, frozenset(changed)


def merge_profiles(
    survivor: Profile,
    loser: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
) -> Profile:
    """The union of two profiles. Commutative except for `segs`/`timer`, which stay the
    survivor's (its memberships are re-evaluated right after; the loser's exit)."""
    attrs = dict(survivor["attrs"])
    meta = dict(survivor["meta"])
    for path, rank in loser["meta"].items():
        held = meta.get(path)
        if held is None or rank > held:
            meta[path] = rank
            if path in loser["attrs"]:
                attrs[path] = loser["attrs"][path]
    aggs = dict(survivor["aggs"])
    for key, state in loser["aggs"].items():
        agg = aggregates.get(key)
        if key not in aggs:
            aggs[key] = state
        elif agg is not None:
            aggs[key] = agg_merge(aggs[key], state, agg)
    abs_states = dict(survivor["abs"])
    for key, state in loser["abs"].items():
        absent = absents.get(key)
        if key not in abs_states:
            abs_states[key] = state
        elif absent is not None:
            abs_states[key] = absent_merge(abs_states[key], state, absent)
    events = _merge_events(survivor["events"], loser["events"])
    return {
        **survivor,
        "attrs": attrs,
        "meta": meta,
        "aggs": aggs,
        "abs": abs_states,
        "events": events,
    }


def _merge_events(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    if a is None:
        return b
    if b is None:
        return a
    return [a[0] + b[0], min(a[1], b[1]), max(a[2], b[2])]


def prune(
    profile: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
    now_ms: int,
) -> Profile:
    """Drop windowed entries no rule can need any more, and inputs of rules since removed."""
    aggs = {
        key: agg_prune(state, aggregates[key], now_ms)
        for key, state in profile["aggs"].items()
        if key in aggregates
    }
    abs_states = {
        key: absent_prune(state, absents[key], now_ms)
        for key, state in profile["abs"].items()
        if key in absents
    }
    return {**profile, "aggs": aggs, "abs": abs_states}


def next_change(
    profile: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
    now_ms: int,
) -> int | None:
    """The earliest event time after `now` at which a rule input changes with no new event."""
    times = [
        agg_next_change(state, aggregates[key], now_ms)
        for key, state in profile["aggs"].items()
        if key in aggregates and aggregates[key].within_ms is not None
    ]
    times.extend(
        absent_next_change(state, absents[key], now_ms)
        for key, state in profile["abs"].items()
        if key in absents
    )
    due = [t for t in times if t is not None]
    return min(due) if due else None


def attribute_values(profile: Profile, path: str) -> list[Any]:
    """Values of `profile.<path>`: through lists, every value (any-match)."""
    attrs = profile["attrs"]
    if path in attrs:
        return _flat(attrs[path])
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in attrs:
            return event_values({"v": attrs[head]}, "v." + ".".join(parts[cut:]))
    return []


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            out.extend(_flat(item))
        return out
    return [value]


def nested_attributes(profile: Profile) -> dict[str, Any]:
    """The merged attributes as one nested object, for output."""
    out: dict[str, Any] = {}
    for path in sorted(profile["attrs"]):
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = profile["attrs"][path]
    return out
