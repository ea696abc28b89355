"""Segment membership: which rules an input change can affect, evaluation at a given `now`,
and the entered/exited transitions, as pure functions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from operators.aggregates import absent_init, absent_value, agg_init, agg_value
from operators.profile import Profile, attribute_values
from operators.rules import Absent, Aggregate, CompiledRule


@dataclass(frozen=True, slots=True)
class Transition:
    segment_id: str
    entered: bool
    sequence: int  # the n-th transition of this (profile, segment), from 1


class SegmentIndex:
    """The compiled rules and the maps from each rule input to the rules that read it."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)  # dependencies first (compile_rules orders them)
        self.order = {r.segment_id: i for i, r in enumerate(self.rules)}
        self.aggregates: dict[str, Aggregate] = {}
        self.absents: dict[str, Absent] = {}
        readers: dict[str, set[str]] = {}
        for rule in self.rules:
            for agg in rule.aggregates:
                self.aggregates[agg.key] = agg
                readers.setdefault(agg.key, set()).add(rule.segment_id)
            for absent in rule.absents:
                self.absents[absent.key] = absent
                readers.setdefault(absent.key, set()).add(rule.segment_id)
        self.readers = {k: frozenset(v) for k, v in readers.items()}
        # Inputs whose value moves with time alone: a change to them reschedules the timer.
        self.windowed = frozenset(
            [k for k, a in self.aggregates.items() if a.within_ms is not None] + list(self.absents)
        )
        dependants: dict[str, set[str]] = {}
        for rule in self.rules:
            for ref in rule.segment_refs:
                dependants.setdefault(ref, set()).add(rule.segment_id)
        self.dependants = {k: frozenset(v) for k, v in dependants.items()}
        # Candidates per event type: an event only touches inputs that can match it.
        typed: dict[str, list[Any]] = {}
        untyped_aggs = [a for a in self.aggregates.values() if a.event_types is None]
        untyped_abs = [a for a in self.absents.values() if a.event_types is None]
        self._untyped = (tuple(untyped_aggs), tuple(untyped_abs))
        for agg in self.aggregates.values():
            for et in agg.event_types or ():
                typed.setdefault(et, []).append(agg)
        typed_abs: dict[str, list[Absent]] = {}
        for absent in self.absents.values():
            for et in absent.event_types or ():
                typed_abs.setdefault(et, []).append(absent)
        self._by_type: dict[str, tuple[tuple[Aggregate, ...], tuple[Absent, ...]]] = {}
        for et in set(typed) | set(typed_abs):
            self._by_type[et] = (
                (*typed.get(et, ()), *untyped_aggs),
                (*typed_abs.get(et, ()), *untyped_abs),
            )
        self.profile_paths = {r.segment_id: r.profile_paths for r in self.rules}

    def candidates(self, event_type: str) -> tuple[tuple[Aggregate, ...], tuple[Absent, ...]]:
        return self._by_type.get(event_type, self._untyped)

    def affected_by_inputs(self, keys: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for key in keys:
            out.update(self.readers.get(key, ()))
        return out

    def affected_by_attributes(self, paths: Iterable[str]) -> set[str]:
        changed = list(paths)
        out: set[str] = set()
        for seg_id, reads in self.profile_paths.items():
            for q in reads:
                if any(p == q or p.startswith(q + ".") or q.startswith(p + ".") for p in changed):
                    out.add(seg_id)
                    break
        return out

    def all_ids(self) -> set[str]:
        return set(self.order)


class _Context:
    """The rules' view of one profile at one `now` (operators.rules.EvalContext)."""

    __slots__ = ("computed", "index", "now_ms", "profile")

    def __init__(self, profile: Profile, index: SegmentIndex, now_ms: int) -> None:
        self.profile = profile
        self.index = index
        self.now_ms = now_ms
        self.computed: dict[str, bool] = {}

    def profile_values(self, path: str) -> list[Any]:
        return attribute_values(self.profile, path)

    def aggregate(self, agg: Aggregate) -> Any:
        aggs = self.profile["aggs"]
        state = aggs[agg.key] if agg.key in aggs else agg_init(agg)
        return agg_value(state, agg, self.now_ms)

    def absent(self, a: Absent) -> bool:
        states = self.profile["abs"]
        state = states[a.key] if a.key in states else absent_init(a)
        return absent_value(state, a, self.now_ms)

    def in_segment(self, segment_id: str) -> bool:
        if segment_id in self.computed:
            return self.computed[segment_id]
        held = self.profile["segs"].get(segment_id)
        return bool(held and held[0])


def context(profile: Profile, index: SegmentIndex, now_ms: int) -> _Context:
    return _Context(profile, index, now_ms)


def evaluate(
    profile: Profile, index: SegmentIndex, which: set[str], now_ms: int
) -> dict[str, bool]:
    """Evaluate the named segments and, transitively, those built on them (`in_segment`)."""
    todo = set(which)
    frontier = list(which)
    while frontier:
        for dep in index.dependants.get(frontier.pop(), ()):
            if dep not in todo:
                todo.add(dep)
                frontier.append(dep)
    ctx = _Context(profile, index, now_ms)
    for rule in index.rules:
        if rule.segment_id in todo:
            ctx.computed[rule.segment_id] = bool(rule.evaluate(ctx))
    return ctx.computed


def transitions(
    memberships: Mapping[str, list[Any]], results: Mapping[str, bool], at_ms: int
) -> tuple[dict[str, list[Any]], list[Transition]]:
    """New memberships and the changes: entered/exited alternate per segment by construction."""
    updated = dict(memberships)
    changes: list[Transition] = []
    for seg_id in sorted(results):
        now_in = results[seg_id]
        held = memberships.get(seg_id)
        was_in = bool(held and held[0])
        if now_in == was_in:
            continue
        sequence = (held[2] if held else 0) + 1
        updated[seg_id] = [now_in, at_ms, sequence]
        changes.append(Transition(seg_id, now_in, sequence))
    return updated, changes


def exit_all(
    memberships: Mapping[str, list[Any]], at_ms: int
) -> tuple[dict[str, list[Any]], list[Transition]]:
    """Every current membership exits (the profile merged away or was deleted)."""
    return transitions(memberships, {s: False for s, held in memberships.items() if held[0]}, at_ms)


def change_id(profile_id: str, segment_id: str, sequence: int) -> str:
    """Deterministic: the same transition gets the same id in a replay or after a crash."""
    return hashlib.sha256(f"{profile_id}|{segment_id}|{sequence}".encode()).hexdigest()[:32]
