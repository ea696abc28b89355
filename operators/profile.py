"""The profile of one cluster, as pure functions over a JSON-shaped dict.

```
{"attrs":  {"person.name.firstName": "Danny", ...},        merged leaf values
 "meta":   {"person.name.firstName": [20, -1, 0, 0, 0]},    winner: [priority, *record.order]
 "aggs":   {AGG_KEY: state},  "abs": {ABSENT_KEY: state},   rule inputs (operators.aggregates)
 "events": [count, first_ms, last_ms] | None,
 "segs":   {SEGMENT_ID: [in_segment, since_ms, transitions]},
 "timer":  ms | None,                                        the scheduled re-evaluation
 "hist":   [count, oldest_ms],   its kept events (operators.steps.history)
 "v": VERSION, "gone": {SEGMENT_ID: transitions}, "hfrom": {INPUT_KEY: ms}}
                                 audience definitions it is built for (operators.steps.rollout)
```
Attribute merge policy (DESIGN §4): per field path the higher-priority source wins; between
equal priorities the later record wins (`Record.order`: the record's time where it has one, else
its place in its source, never the order sources were read in). Nulls never overwrite. Every
function returns a new dict and leaves its arguments alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from operators.absent import (
    absent_add_known,
    absent_changes_at,
    absent_init,
    absent_merge,
    absent_next_change,
    absent_prune,
)
from operators.aggregates import (
    agg_add,
    agg_changes_at,
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
    out: list[tuple[str, Any]] = []
    _flatten_into(out, body, prefix)
    return iter(out)


def _flatten_into(out: list[tuple[str, Any]], body: Mapping[str, Any], prefix: str) -> None:
    skip = SKIP_ATTRIBUTES if not prefix else ()
    for key, value in body.items():
        if key in skip:
            continue
        if type(value) is dict or isinstance(value, dict):
            _flatten_into(out, value, f"{prefix}{key}.")
        elif value is not None:
            out.append((f"{prefix}{key}", value))


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
    return apply_event_body(profile, ts, record.body, aggregates, absents)


def apply_event_body(
    profile: Profile,
    ts: int,
    event: Mapping[str, Any],
    aggregates: Sequence[Aggregate],
    absents: Sequence[Absent],
) -> tuple[Profile, frozenset[str]]:
    """`apply_event` of an event's time and body (a record, or one kept in the history)."""
    held = profile["events"]
    if held:
        count, first, last = held
        events = [count + 1, ts if ts < first else first, ts if ts > last else last]
    else:
        events = [1, ts, ts]
    out = {**profile, "events": events}
    changed: list[str] = []
    aggs: dict[str, Any] | None = None
    for agg in aggregates:
        if agg.matches(event):
            if aggs is None:
                aggs = dict(profile["aggs"])
            key = agg.key
            aggs[key] = agg_add(aggs[key] if key in aggs else agg_init(agg), agg, ts, event)
            changed.append(key)
    if aggs is not None:
        out["aggs"] = aggs
    abs_states: dict[str, Any] | None = None
    for absent in absents:
        is_after = absent.after(event)
        is_missing = absent.missing(event)
        if is_after or is_missing:
            if abs_states is None:
                abs_states = dict(profile["abs"])
            key = absent.key
            state = abs_states[key] if key in abs_states else absent_init(absent)
            abs_states[key] = absent_add_known(state, ts, is_after, is_missing)
            changed.append(key)
    if abs_states is not None:
        out["abs"] = abs_states
    return out, frozenset(changed)


def rebuild_inputs(
    profile: Profile,
    events: Iterable[tuple[int, Mapping[str, Any]]],
    aggregates: Sequence[Aggregate],
    absents: Sequence[Absent],
) -> Profile:
    """The inputs `aggregates` and `absents` built anew from `events` (time order), as if
    every event had been applied to them; the profile's other inputs and summaries stay."""
    scratch = new_profile()
    if aggregates or absents:
        for ts, body in events:
            scratch, _ = apply_event_body(scratch, ts, body, aggregates, absents)
    aggs = {k: v for k, v in profile["aggs"].items() if k not in {a.key for a in aggregates}}
    abs_states = {k: v for k, v in profile["abs"].items() if k not in {a.key for a in absents}}
    aggs.update(scratch["aggs"])
    abs_states.update(scratch["abs"])
    return {**profile, "aggs": aggs, "abs": abs_states}


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
    return {
        **profile,
        "aggs": _pruned_aggs(profile["aggs"], aggregates, now_ms),
        "abs": _pruned_absents(profile["abs"], absents, now_ms),
    }


_DROP: Any = object()  # an input of a rule since removed


def _pruned_aggs(
    states: dict[str, Any], aggregates: Mapping[str, Aggregate], now_ms: int
) -> dict[str, Any]:
    """`states` itself when nothing is pruned (the common case), else a pruned copy."""
    out: dict[str, Any] | None = None
    for key, state in states.items():
        agg = aggregates.get(key)
        if agg is None:
            new = _DROP
        else:
            within = agg.within_ms
            # Only a window whose oldest entry has left can lose entries (agg_prune's test).
            if within is None or not state or state[0][0] > now_ms - within:
                continue
            new = agg_prune(state, agg, now_ms)
        out = _replaced(states, out, key, new)
    return states if out is None else out


def _replaced(
    states: dict[str, Any], out: dict[str, Any] | None, key: str, new: Any
) -> dict[str, Any]:
    """A copy of `states` (made on the first change) with `key` set to `new` or dropped."""
    if out is None:
        out = dict(states)
    if new is _DROP:
        del out[key]
    else:
        out[key] = new
    return out


def _pruned_absents(
    states: dict[str, Any], absents: Mapping[str, Absent], now_ms: int
) -> dict[str, Any]:
    out: dict[str, Any] | None = None
    for key, state in states.items():
        absent = absents.get(key)
        new = _DROP if absent is None else absent_prune(state, absent, now_ms)
        if new is state:
            continue
        out = _replaced(states, out, key, new)
    return states if out is None else out


def next_change(
    profile: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
    now_ms: int,
) -> int | None:
    """The earliest event time after `now` at which a rule input changes with no new event."""
    return min((t for _, t in _input_changes(profile, aggregates, absents, now_ms)), default=None)


def change_points(
    profile: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
    now_ms: int,
) -> Iterator[tuple[int, list[str]]]:
    """Each moment after `now` at which a windowed input changes with no new event, in
    order, and the keys of the inputs that can change then (every other input changes only
    later, so at that moment it has the value it has now). After a moment only the
    inputs that changed at it are looked at again: the others' next change has not moved."""
    upcoming = [(t, key) for key, t in _input_changes(profile, aggregates, absents, now_ms)]
    heapq.heapify(upcoming)
    aggs, abs_ = profile["aggs"], profile["abs"]
    while upcoming:
        at = upcoming[0][0]
        keys: list[str] = []
        while upcoming and upcoming[0][0] == at:
            keys.append(heapq.heappop(upcoming)[1])
        yield at, keys
        for key in keys:
            if key in aggs:
                t = _agg_change(aggs[key], aggregates[key], at)
            else:
                t = absent_next_change(abs_[key], absents[key], at)
            if t is not None:
                heapq.heappush(upcoming, (t, key))


def _agg_change(state: Any, agg: Aggregate, now_ms: int) -> int | None:
    """When a windowed aggregate next changes after `now` with no new event."""
    within = agg.within_ms
    assert within is not None
    first: int = state[0][0]
    if first > now_ms - within and state[-1][0] <= now_ms:
        return first + within  # all in the window: the oldest leaves first
    return agg_next_change(state, agg, now_ms)


def _input_changes(
    profile: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
    now_ms: int,
) -> Iterator[tuple[str, int]]:
    """Each windowed input of the profile that changes after `now` with no new event, and the
    first moment it does."""
    for key, state in profile["aggs"].items():
        if not state:
            continue
        agg = aggregates.get(key)
        if agg is None or agg.within_ms is None:
            continue
        t = _agg_change(state, agg, now_ms)
        if t is not None:
            yield key, t
    for key, state in profile["abs"].items():
        absent = absents.get(key)
        if absent is not None:
            t = absent_next_change(state, absent, now_ms)
            if t is not None:
                yield key, t


def changes_at(
    profile: Profile,
    aggregates: Mapping[str, Aggregate],
    absents: Mapping[str, Absent],
    at_ms: int,
) -> set[str]:
    """The keys of the windowed inputs whose value can change at exactly `at_ms` with no new
    event (a window entry entering or leaving, an A becoming the latest or D old): every
    other input has at `at_ms` the value it had just before. A superset of the inputs whose
    value really changes (an entry can enter as another leaves)."""
    out: set[str] = set()
    for key, state in profile["aggs"].items():
        agg = aggregates.get(key)
        if agg is not None and agg_changes_at(state, agg, at_ms):
            out.add(key)
    for key, state in profile["abs"].items():
        absent = absents.get(key)
        if absent is not None and absent_changes_at(state, absent, at_ms):
            out.add(key)
    return out


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
