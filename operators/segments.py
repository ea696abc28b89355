"""Segment membership: which rules an input change can affect, evaluation at a given `now`,
and the entered/exited transitions, as pure functions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from operators.absent import absent_init, absent_value
from operators.aggregates import agg_init, agg_reader, agg_value
from operators.profile import Profile, attribute_values, change_points, changes_at
from operators.rules import Absent, Aggregate, CompiledRule

_MEMO_LIMIT = 4096  # entries per memo table before it starts afresh


@dataclass(frozen=True, slots=True)
class Transition:
    segment_id: str
    entered: bool
    sequence: int  # the n-th transition of this (profile, segment), from 1


class SegmentIndex:
    """The compiled rules and the maps from each rule input to the rules that read it."""

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        traits: Mapping[str, Aggregate] | None = None,
        conditions: Sequence[CompiledRule] = (),
    ) -> None:
        """`conditions`: rules that are not segments (journeys' `exit_when` and `if`), read
        on demand: their inputs are maintained like a trait's, and they flip nothing."""
        self.rules = tuple(rules)  # dependencies first (compile_rules orders them)
        # name -> aggregate: maintained per event like the rules' inputs (their keys are in
        # `aggregates`), rebuilt by a rollout when added; read by `trait_values`.
        self.traits: dict[str, Aggregate] = dict(traits or {})
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
        # The inputs rules read: only they have change points a timer waits for (a trait no
        # rule reads is evaluated when read, at its reader's `now`).
        self.rule_aggregates = dict(self.aggregates)
        for agg in self.traits.values():
            self.aggregates.setdefault(agg.key, agg)
        for condition in conditions:
            for agg in condition.aggregates:
                self.aggregates.setdefault(agg.key, agg)
        # Inputs whose value moves with time alone: a change to them reschedules the timer.
        self.windowed = frozenset(
            [k for k, a in self.rule_aggregates.items() if a.within_ms is not None]
            + list(self.absents)
        )
        # Windowed trait inputs no rule reads: pruned as events come (no timer does it).
        self.untimed_windows = frozenset(
            k for k, a in self.aggregates.items() if a.within_ms is not None
        ).difference(self.windowed)
        # Segments reading a windowed input: when one of them flips depends on its other
        # inputs too, so evaluating it reschedules the timer (`next_flip`).
        self.timed = frozenset(s for k in self.windowed for s in self.readers.get(k, ()))
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
        self.value_readers = {k: agg_reader(a) for k, a in self.aggregates.items()}
        # Memo tables of the per-record lookups; their keys repeat (the same sets of segments,
        # the same sets of changed attribute paths), so each is worked out once.
        self._plans: dict[frozenset[str], tuple[tuple[str, Callable[[Any], bool]], ...]] = {}
        self._by_paths: dict[frozenset[str], frozenset[str]] = {}

    def candidates(self, event_type: str) -> tuple[tuple[Aggregate, ...], tuple[Absent, ...]]:
        return self._by_type.get(event_type, self._untyped)

    def affected_by_inputs(self, keys: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for key in keys:
            out.update(self.readers.get(key, ()))
        return out

    def affected_by_attributes(self, paths: Iterable[str]) -> set[str]:
        key = paths if isinstance(paths, frozenset) else frozenset(paths)
        if not key:
            return set()
        hit = self._by_paths.get(key)
        if hit is None:
            hit = frozenset(self._affected_by_attributes(key))
            if len(self._by_paths) >= _MEMO_LIMIT:
                self._by_paths.clear()
            self._by_paths[key] = hit
        return set(hit)

    def _affected_by_attributes(self, paths: Iterable[str]) -> set[str]:
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

    def plan(self, which: Iterable[str]) -> tuple[tuple[str, Callable[[Any], bool]], ...]:
        """``(segment_id, evaluate)`` of the named segments and, transitively, those built on
        them (``in_segment``), dependencies first; unknown ids are ignored."""
        key = which if isinstance(which, frozenset) else frozenset(which)
        plan = self._plans.get(key)
        if plan is None:
            todo = set(key)
            frontier = list(key)
            while frontier:
                for dep in self.dependants.get(frontier.pop(), ()):
                    if dep not in todo:
                        todo.add(dep)
                        frontier.append(dep)
            plan = tuple((r.segment_id, r.evaluate) for r in self.rules if r.segment_id in todo)
            if len(self._plans) >= _MEMO_LIMIT:
                self._plans.clear()
            self._plans[key] = plan
        return plan


class _Context:
    """The rules' view of one profile at one `now` (operators.rules.EvalContext)."""

    __slots__ = ("_abs", "_aggs", "_readers", "_segs", "computed", "index", "now_ms", "profile")

    def __init__(self, profile: Profile, index: SegmentIndex, now_ms: int) -> None:
        self.profile = profile
        self.index = index
        self.now_ms = now_ms
        self.computed: dict[str, bool] = {}
        self._aggs: dict[str, Any] = profile["aggs"]
        self._abs: dict[str, Any] = profile["abs"]
        self._segs: dict[str, list[Any]] = profile["segs"]
        self._readers = index.value_readers

    def profile_values(self, path: str) -> list[Any]:
        return attribute_values(self.profile, path)

    def aggregate(self, agg: Aggregate) -> Any:
        key = agg.key
        aggs = self._aggs
        state = aggs[key] if key in aggs else agg_init(agg)
        read = self._readers.get(key)
        if read is None:  # a call from outside the index (explain of another rule set)
            return agg_value(state, agg, self.now_ms)
        return read(state, self.now_ms)

    def absent(self, a: Absent) -> bool:
        states = self._abs
        key = a.key
        state = states[key] if key in states else absent_init(a)
        return absent_value(state, a, self.now_ms)

    def in_segment(self, segment_id: str) -> bool:
        computed = self.computed
        if segment_id in computed:
            return computed[segment_id]
        held = self._segs.get(segment_id)
        return bool(held and held[0])


def context(profile: Profile, index: SegmentIndex, now_ms: int) -> _Context:
    return _Context(profile, index, now_ms)


def evaluate(
    profile: Profile, index: SegmentIndex, which: set[str], now_ms: int
) -> dict[str, bool]:
    """Evaluate the named segments and, transitively, those built on them (`in_segment`)."""
    ctx = _Context(profile, index, now_ms)
    computed = ctx.computed
    for segment_id, fn in index.plan(which):
        computed[segment_id] = bool(fn(ctx))
    return computed


def due_at(profile: Profile, index: SegmentIndex, at_ms: int) -> set[str]:
    """The segments a timer firing at `at_ms` needs to evaluate: those reading a windowed
    input that can change value at exactly `at_ms` (``evaluate`` adds their ``in_segment``
    dependants). Every other segment keeps the value it had when last evaluated, as long as
    the timer is set again whenever a segment reading a window is evaluated (`index.timed`):
    between two change points of its inputs a segment's value does not move.

    For the engine: at a timer firing at ``ts`` with the profile as stored,
    ``which = due_at(profile, index, ts)`` gives the same transitions as every timed segment.
    """
    return index.affected_by_inputs(
        changes_at(profile, index.rule_aggregates, index.absents, at_ms)
    )


# How many change points of a profile's windowed inputs `next_flip` looks at before it settles
# for a timer that only looks further (measured on the bench rules: see benchmarks/RESULTS.md).
LOOKAHEAD = 8


def next_flip(
    profile: Profile, index: SegmentIndex, now_ms: int, lookahead: int = LOOKAHEAD
) -> int | None:
    """When the profile's timer should fire: the first moment after `now_ms` at which a
    segment's value changes with no new event, or None if none ever does.

    A windowed input changes value at many moments that change no segment (the second of five
    views leaving a `count(...) >= 3` window), so the timer is not set at the next input change
    but at the first one where `evaluate` of the segments whose inputs change there disagrees with
    the memberships held. At most `lookahead` change points are tried; if none flips a
    segment, the timer is set at the last one tried, and looks further when it fires. Between
    the points tried no input changes, so no segment can change either: firing only at the
    flip emits exactly the transitions, at exactly the times, of firing at every change.
    `profile["segs"]` must hold the memberships as of `now_ms`, and the timer must be set
    again whenever one of `index.timed` is evaluated: a segment's flip can move when any of
    its inputs changes (`profile.level == "gold" and count(…, within=…) >= 2` flips as a view
    leaves the window only once the profile is gold)."""
    held = profile["segs"]
    points = change_points(profile, index.rule_aggregates, index.absents, now_ms)
    for tried, (at, inputs) in enumerate(points, start=1):
        if tried == lookahead:
            return at
        which = index.affected_by_inputs(inputs)
        if which:
            for segment_id, value in evaluate(profile, index, which, at).items():
                membership = held.get(segment_id)
                if value != bool(membership and membership[0]):
                    return at
    return None


def transitions(
    memberships: Mapping[str, list[Any]], results: Mapping[str, bool], at_ms: int
) -> tuple[dict[str, list[Any]], list[Transition]]:
    """New memberships and the changes: entered/exited alternate per segment by construction."""
    updated = dict(memberships)
    changed: list[tuple[str, bool, list[Any] | None]] = []
    for seg_id, now_in in results.items():
        held = memberships.get(seg_id)
        if now_in == bool(held and held[0]):
            continue
        changed.append((seg_id, now_in, held))
    if len(changed) > 1:
        changed.sort(key=_first)
    changes: list[Transition] = []
    for seg_id, now_in, held in changed:
        sequence = (held[2] if held else 0) + 1
        updated[seg_id] = [now_in, at_ms, sequence]
        changes.append(Transition(seg_id, now_in, sequence))
    return updated, changes


def _first(item: tuple[str, bool, list[Any] | None]) -> str:
    return item[0]


def exit_all(
    memberships: Mapping[str, list[Any]], at_ms: int
) -> tuple[dict[str, list[Any]], list[Transition]]:
    """Every current membership exits (the profile merged away or was deleted)."""
    return transitions(memberships, {s: False for s, held in memberships.items() if held[0]}, at_ms)


def trait_values(
    profile: Profile, index: SegmentIndex, now_ms: int, names: Iterable[str] | None = None
) -> dict[str, Any]:
    """Each trait's value at `now_ms` (None: no value, e.g. the sum of no purchases' prices is
    0 but the `last` of none is None); only the `names` given (an unknown one: None)."""
    states = profile["aggs"]
    readers = index.value_readers
    traits = index.traits
    out: dict[str, Any] = {}
    for name in traits if names is None else names:
        agg = traits.get(name)
        if agg is None:
            out[name] = None
            continue
        key = agg.key
        state = states[key] if key in states else agg_init(agg)
        out[name] = readers[key](state, now_ms)
    return out


def change_id(profile_id: str, segment_id: str, sequence: int) -> str:
    """Deterministic: the same transition gets the same id in a replay or after a crash."""
    return hashlib.sha256(f"{profile_id}|{segment_id}|{sequence}".encode()).hexdigest()[:32]
