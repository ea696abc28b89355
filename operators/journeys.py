"""Journeys (DESIGN §12) as pure functions: a journey's definition compiled into a graph of
steps, and what an instance does next. The state they read and write lives in the profile
(`operators.steps.journeys` owns it), so it moves with the profile on a merge.

A step is addressed by its path: `1`, `2`, … at the top, `3.then.1` inside a branch. An
instance holds the path of the step it runs next; a `wait` holds it until an event-time moment
(the profile's timer wakes it), a `send` and an `if` run at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from config.settings import JourneySettings, StepSettings, WaitUntilSettings, duration_ms
from operators.profile import Profile, attribute_values
from operators.rules import (
    Aggregate,
    CompiledRule,
    RuleErrors,
    compile_condition,
    compile_event_condition,
)
from operators.rules.paths import event_values
from operators.segments import SegmentIndex, context


@dataclass(frozen=True, slots=True)
class Node:
    path: str
    kind: Literal["send", "wait", "if"]
    next: str | None  # the step after this one (None: the journey ends)
    destination: str = ""
    message: str = ""
    wait_ms: int | None = None
    until: tuple[int, int] | None = None  # (hour, minute)
    timezone: str = "UTC"  # an IANA name, or `profile.PATH`
    rule: CompiledRule | None = None
    then: str | None = None  # first step of each branch (None: empty branch, go on)
    otherwise: str | None = None


@dataclass(frozen=True, slots=True)
class Journey:
    id: str
    version: str
    priority: int
    segment: str | None  # trigger: entering this segment
    event: Aggregate | None  # trigger: an event matching this condition
    key: str | None  # event path (without `event.`) naming the instance
    exit_rule: CompiledRule | None
    min_gap_ms: int | None
    max_entries: int | None
    per_ms: int | None
    once: bool
    holdout_bp: int
    late_send: bool
    max_lateness_ms: int
    exit_on_edit: bool
    first: str
    nodes: Mapping[str, Node] = field(repr=False)

    @property
    def conditions(self) -> list[CompiledRule]:
        """The rules this journey reads (their inputs are maintained per event)."""
        rules = [n.rule for n in self.nodes.values() if n.rule is not None]
        return rules if self.exit_rule is None else [self.exit_rule, *rules]


def version_of(journey: JourneySettings) -> str:
    """What an instance depends on, as a short hash: every setting but the display name. An
    edit makes a new version; instances finish on the version they started (`on_edit`)."""
    data = journey.model_dump(mode="json", by_alias=True, exclude={"name"})
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def compile_journey(
    journey: JourneySettings, segments: Sequence[str], traits: Mapping[str, Aggregate]
) -> Journey:
    """One journey; RuleErrors with every problem of its rules."""
    errors: list[Any] = []
    nodes: dict[str, Node] = {}

    def rule(where: str, text: str) -> CompiledRule | None:
        try:
            return compile_condition(f"{journey.id!r} {where}", text, segments, traits)
        except RuleErrors as exc:
            errors.extend(exc.errors)
            return None

    def chain(steps: Sequence[StepSettings], prefix: str, after: str | None) -> str | None:
        paths = [f"{prefix}{i}" for i in range(1, len(steps) + 1)]
        for i, (step, path) in enumerate(zip(steps, paths, strict=True)):
            following = paths[i + 1] if i + 1 < len(paths) else after
            nodes[path] = _node(step, path, following, rule, chain)
        return paths[0] if paths else after

    event = None
    if journey.trigger.event is not None:
        try:
            event = compile_event_condition(f"{journey.id!r} trigger", journey.trigger.event)
        except RuleErrors as exc:
            errors.extend(exc.errors)
    exit_rule = None if journey.exit_when is None else rule("exit_when", journey.exit_when)
    first = chain(journey.steps, "", None)
    if errors:
        raise RuleErrors(errors)
    assert first is not None  # steps has at least one step
    reentry = journey.reentry
    return Journey(
        id=journey.id,
        version=version_of(journey),
        priority=journey.priority,
        segment=journey.trigger.segment,
        event=event,
        key=None if journey.key is None else journey.key.removeprefix("event."),
        exit_rule=exit_rule,
        min_gap_ms=None if reentry.min_gap is None else duration_ms(reentry.min_gap),
        max_entries=reentry.max,
        per_ms=None if reentry.per is None else duration_ms(reentry.per),
        once=reentry.once,
        holdout_bp=journey.holdout_bp,
        late_send=journey.late == "send",
        max_lateness_ms=journey.max_lateness_ms,
        exit_on_edit=journey.on_edit == "exit",
        first=first,
        nodes=nodes,
    )


def _node(step: StepSettings, path: str, following: str | None, rule: Any, chain: Any) -> Node:
    if step.send is not None:
        send = step.send
        return Node(path, "send", following, destination=send.destination, message=send.message)
    if isinstance(step.wait, str):
        return Node(path, "wait", following, wait_ms=duration_ms(step.wait))
    if isinstance(step.wait, WaitUntilSettings):
        hour, minute = (int(x) for x in step.wait.until.split(":"))
        return Node(path, "wait", following, until=(hour, minute), timezone=step.wait.timezone)
    assert step.if_ is not None
    return Node(
        path,
        "if",
        following,
        rule=rule(f"step {path}", step.if_),
        then=chain(step.then, f"{path}.then.", following),
        otherwise=chain(step.else_, f"{path}.else.", following),
    )


def compile_journeys(
    journeys: Sequence[JourneySettings], segments: Sequence[str], traits: Mapping[str, Aggregate]
) -> tuple[Journey, ...]:
    """Every journey of the config; RuleErrors with every problem of every journey."""
    errors: list[Any] = []
    out: list[Journey] = []
    for journey in journeys:
        try:
            out.append(compile_journey(journey, segments, traits))
        except RuleErrors as exc:
            errors.extend(exc.errors)
    if errors:
        raise RuleErrors(errors)
    return tuple(out)


# -- ids -------------------------------------------------------------------------------------


def instance_id(profile_id: str, journey_id: str, key: str, n: int) -> str:
    """Deterministic: the n-th entry of a profile (with this key) into a journey."""
    return hashlib.sha256(f"{profile_id}|{journey_id}|{key}|{n}".encode()).hexdigest()[:20]


def send_id(journey_id: str, version: str, instance: str, step: str) -> str:
    """The idempotency key of a send: the same in a replay or after a crash."""
    text = f"{journey_id}|{version}|{instance}|{step}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def held_out(profile_id: str, journey_id: str, holdout_bp: int) -> bool:
    """The same profile is always in (or out of) a journey's holdout."""
    if holdout_bp <= 0:
        return False
    digest = hashlib.sha256(f"holdout|{journey_id}|{profile_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10_000 < holdout_bp


def key_of(journey: Journey, event: Mapping[str, Any] | None) -> str | None:
    """The instance key: "" per profile; the event's value at `key` (None: the triggering
    event has none, so no instance starts)."""
    if journey.key is None:
        return ""
    values = [] if event is None else event_values(event, journey.key)
    return None if not values else str(values[0])


# -- re-entry ------------------------------------------------------------------------------------

Entries = list[Any]  # [how many entries, last entry ms, [recent entry ms, newest last]]


def may_enter(journey: Journey, entries: Entries | None, now_ms: int) -> bool:
    """Whether another instance may start (none of this key is in flight: checked by the
    caller)."""
    if entries is None:
        return True
    count, last, recent = entries
    if journey.once and count > 0:
        return False
    if journey.min_gap_ms is not None and now_ms - last < journey.min_gap_ms:
        return False
    if journey.max_entries is not None and journey.per_ms is not None:
        inside = [t for t in recent if t > now_ms - journey.per_ms]
        if len(inside) >= journey.max_entries:
            return False
    return True


def entered(journey: Journey, entries: Entries | None, now_ms: int) -> Entries:
    count, _, recent = entries if entries is not None else (0, 0, [])
    keep = journey.max_entries or 0
    recent = [*recent, now_ms][-keep:] if keep else []
    return [count + 1, now_ms, recent]


# -- waits -------------------------------------------------------------------------------------


def zone_of(node: Node, profile: Profile) -> ZoneInfo:
    """The wait's time zone: named, or read from the profile (UTC when it holds none valid)."""
    name = node.timezone
    if name.startswith("profile."):
        values = attribute_values(profile, name.removeprefix("profile."))
        name = str(values[0]) if values else "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def next_clock(at_ms: int, hour: int, minute: int, zone: ZoneInfo) -> int:
    """The first moment at or after `at_ms` when the clock in `zone` shows hour:minute. On a
    day the clock skips it (a DST change), the moment it would have been (zoneinfo's fold)."""
    local = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(zone)
    day = local.date()
    for _ in range(3):
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        ms = int(candidate.timestamp() * 1000)
        if ms >= at_ms:
            return ms
        day += timedelta(days=1)
    raise AssertionError("a time of day recurs within three days")


def wait_until(node: Node, at_ms: int, profile: Profile) -> int:
    if node.wait_ms is not None:
        return at_ms + node.wait_ms
    assert node.until is not None
    return next_clock(at_ms, *node.until, zone_of(node, profile))


# -- running an instance ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What an instance did at one step: a send to make, a wait started, a branch taken."""

    node: Node
    due_ms: int | None = None  # wait: until when
    branch: str = ""  # if: "then" or "else"


def holds(rule: CompiledRule, profile: Profile, index: SegmentIndex, now_ms: int) -> bool:
    return bool(rule.evaluate(context(profile, index, now_ms)))


def run(
    journey: Journey,
    start: str | None,
    profile: Profile,
    index: SegmentIndex,
    at_ms: int,
) -> tuple[list[Step], str | None, int | None]:
    """Run from step `start` at `at_ms` until a wait that ends later, or the end: the steps
    taken, the step to run next (None: done) and until when it waits."""
    taken: list[Step] = []
    path = start
    for _ in range(len(journey.nodes) + 1):  # a journey has no loops: each step runs once
        if path is None:
            return taken, None, None
        node = journey.nodes[path]
        if node.kind == "send":
            taken.append(Step(node))
            path = node.next
        elif node.kind == "wait":
            due = wait_until(node, at_ms, profile)
            taken.append(Step(node, due_ms=due))
            if due > at_ms:
                return taken, node.next, due
            path = node.next
        else:
            assert node.rule is not None
            yes = holds(node.rule, profile, index, at_ms)
            taken.append(Step(node, branch="then" if yes else "else"))
            path = node.then if yes else node.otherwise
    raise AssertionError(f"journey {journey.id}: a step loop")


# -- merging two profiles' journey state --------------------------------------------------------


def merge_state(
    survivor: dict[str, Any] | None, loser: dict[str, Any] | None, log_max: int
) -> Any:
    """The journey state of two merged profiles. Of two instances of one journey and key in
    flight, the one entered first goes on; the other is returned for the caller to end
    (reason `merged`). Entries, totals and cap windows add up; the trace keeps the newest
    `log_max` lines."""
    if not loser:
        return survivor, []
    if not survivor:
        return loser, []
    instances = dict(survivor.get("i", {}))
    ended: list[tuple[str, dict[str, Any]]] = []
    held = {(i["j"], i["k"]): iid for iid, i in instances.items()}
    for iid, inst in loser.get("i", {}).items():
        other = held.get((inst["j"], inst["k"]))
        if other is None:
            instances[iid] = inst
            continue
        kept = instances[other]
        if (inst["in"], iid) < (kept["in"], other):
            ended.append((other, kept))
            del instances[other]
            instances[iid] = inst
        else:
            ended.append((iid, inst))
    entries: dict[str, dict[str, Entries]] = {
        j: dict(keys) for j, keys in survivor.get("r", {}).items()
    }
    for j, keys in loser.get("r", {}).items():
        mine = entries.setdefault(j, {})
        for key, (count, last, recent) in keys.items():
            if key in mine:
                c0, l0, r0 = mine[key]
                mine[key] = [c0 + count, max(l0, last), sorted(r0 + recent)[-max(len(r0), 1) :]]
            else:
                mine[key] = [count, last, recent]
    totals: dict[str, dict[str, int]] = {j: dict(n) for j, n in survivor.get("n", {}).items()}
    for j, counts in loser.get("n", {}).items():
        mine_n = totals.setdefault(j, {})
        for what, n in counts.items():
            mine_n[what] = mine_n.get(what, 0) + n
    merged = {
        "i": instances,
        "r": entries,
        "n": totals,
        "c": sorted(survivor.get("c", []) + loser.get("c", [])),
        "log": sorted(survivor.get("log", []) + loser.get("log", []), key=_first_two)[-log_max:],
        "due": min_due(instances),
    }
    return merged, ended


def _first_two(line: list[Any]) -> tuple[Any, Any]:
    return line[0], line[2]


def by_wake(item: tuple[str, Mapping[str, Any]]) -> tuple[int, str]:
    """Instances (id, state) in the order they wake: those not waiting first, then by time."""
    due = item[1].get("due")
    return (due if due is not None else -1), item[0]


def min_due(instances: Mapping[str, Mapping[str, Any]]) -> int | None:
    dues = [i["due"] for i in instances.values() if i.get("due") is not None]
    return min(dues) if dues else None
