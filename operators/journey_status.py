"""What the journeys' state holds, read from the profiles (`cdp journeys status` and
`cdp journeys trace`, DESIGN §12).

Every number comes from the state `operators.steps.journeys` keeps in each profile (`j`):
the totals `n` (never trimmed), the instances in flight `i` and the bounded trace `log`. A
state written by several processes is read through `operators.store.open_state`, which
holds each profile once, so the sums over profiles are the sums over the processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from config.settings import JourneySettings, StepSettings, WaitUntilSettings
from operators.journeys import by_wake, version_of
from operators.steps.journeys import LOG_MAX, version_key
from operators.steps.profiles import PREFIX as PROFILES
from operators.store import Store, decode
from schemas.records import iso_ms

SEND_OUTCOMES = ("sent", "late", "capped", "held_out")


# -- what a step is ------------------------------------------------------------------------------


def step_labels(journey: JourneySettings) -> dict[str, str]:
    """Each step's path (`1`, `3.then.1`, as `operators.journeys` names them) -> what it does,
    e.g. `send cart-1 to email`, `wait 1d`, `if profile.tier == "vip"`."""
    labels: dict[str, str] = {}

    def walk(steps: Sequence[StepSettings], prefix: str) -> None:
        for i, step in enumerate(steps, start=1):
            path = f"{prefix}{i}"
            labels[path] = _label(step)
            walk(step.then, f"{path}.then.")
            walk(step.else_, f"{path}.else.")

    walk(journey.steps, "")
    return labels


def _label(step: StepSettings) -> str:
    if step.send is not None:
        return f"send {step.send.message} to {step.send.destination}"
    if isinstance(step.wait, WaitUntilSettings):
        return f"wait until {step.wait.until} {step.wait.timezone}"
    if step.wait is not None:
        return f"wait {step.wait}"
    return f"if {step.if_}"


def stored_version(store: Store, journey_id: str, version: str) -> JourneySettings | None:
    """A journey as it was at a version instances started on (None: not kept, or no longer
    readable as settings)."""
    raw = store.get(version_key(journey_id, version))
    if raw is None:
        return None
    try:
        return JourneySettings.model_validate(orjson.loads(raw))
    except (ValidationError, orjson.JSONDecodeError):
        return None


# -- status: sums over every profile ---------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """Instances of one journey version in flight before one step."""

    count: int = 0
    first_wake: int | None = None
    last_wake: int | None = None

    def add(self, due: int | None) -> None:
        self.count += 1
        if due is not None:
            self.first_wake = due if self.first_wake is None else min(self.first_wake, due)
            self.last_wake = due if self.last_wake is None else max(self.last_wake, due)


@dataclass(slots=True)
class Tally:
    """The journeys' state summed over profiles (`add` one profile's `j` at a time)."""

    profiles: int = 0  # profiles with any journey state
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    waiting: dict[tuple[str, str, str], _Group] = field(default_factory=dict)

    def add(self, state: Mapping[str, Any]) -> None:
        self.profiles += 1
        for journey_id, counts in state.get("n", {}).items():
            mine = self.totals.setdefault(journey_id, {})
            for what, n in counts.items():
                mine[what] = mine.get(what, 0) + n
        for inst in state.get("i", {}).values():
            held = (inst["j"], inst["v"], inst.get("at") or "")
            self.waiting.setdefault(held, _Group()).add(inst.get("due"))


def tally(states: Iterable[Mapping[str, Any]]) -> Tally:
    """The sum of profiles' journey states (`profiles_with_state` reads them from a store)."""
    out = Tally()
    for state in states:
        out.add(state)
    return out


def profiles_with_state(store: Store) -> Iterator[Mapping[str, Any]]:
    """The journey state of every profile that has one. A profile never in a journey has no
    `"j":` key, so most of a large state is skipped undecoded (an attribute that merely holds
    those bytes is decoded and then skipped)."""
    for _, raw in store.scan(PROFILES):
        if b'"j":' not in raw:
            continue
        state = decode(raw).get("j")
        if state:
            yield state


@dataclass(frozen=True, slots=True)
class Waiting:
    step: str  # the step the instances run next, when their wait ends
    label: str
    version: str
    instances: int
    first_wake_ms: int | None
    last_wake_ms: int | None


@dataclass(frozen=True, slots=True)
class JourneyStatus:
    id: str
    configured: bool  # False: the journey has state but was taken out of the config
    version: str | None  # the configured version
    waiting: tuple[Waiting, ...]
    totals: Mapping[str, int]  # entered, completed, sent, late, capped, held_out, …
    exited: Mapping[str, int]  # reason -> instances
    steps: Mapping[str, Mapping[str, int]]  # send step -> outcome -> count
    labels: Mapping[str, str]  # step -> what it does (the configured version's, else any)

    @property
    def in_flight(self) -> int:
        return sum(w.instances for w in self.waiting)

    @property
    def send_outcomes(self) -> tuple[str, ...]:
        """sent, late, capped, held_out, and any other outcome a step has (a newer engine's)."""
        more = {o for counts in self.steps.values() for o in counts} - set(SEND_OUTCOMES)
        return (*SEND_OUTCOMES, *sorted(more))

    def to_json(self) -> dict[str, Any]:
        return {
            "journey": self.id,
            "configured": self.configured,
            "version": self.version,
            "in_flight": self.in_flight,
            "waiting": [
                {
                    "step": w.step,
                    "label": w.label,
                    "version": w.version,
                    "instances": w.instances,
                    "first_wake": _iso(w.first_wake_ms),
                    "last_wake": _iso(w.last_wake_ms),
                }
                for w in self.waiting
            ],
            "totals": dict(self.totals),
            "exited": dict(self.exited),
            "steps": {
                step: {"label": self.labels.get(step, ""), **counts}
                for step, counts in self.steps.items()
            },
        }


Labels = Callable[[str, str], Mapping[str, str]]  # (journey, version) -> step labels


def statuses(
    counted: Tally, journeys: Sequence[JourneySettings], labels_of: Labels
) -> list[JourneyStatus]:
    """Every configured journey (in config order), then those with state but no longer
    configured (by id). `labels_of` gives the steps of a version instances started on."""
    configured = {j.id: j for j in journeys}
    seen = set(counted.totals) | {held[0] for held in counted.waiting}
    out = [_status(counted, j.id, j, labels_of) for j in journeys]
    out += [_status(counted, jid, None, labels_of) for jid in sorted(seen - set(configured))]
    return out


def _status(
    counted: Tally, journey_id: str, config: JourneySettings | None, labels_of: Labels
) -> JourneyStatus:
    version = None if config is None else version_of(config)
    labels: dict[str, str] = {}
    waiting: list[Waiting] = []
    mine = [(v, step, g) for (jid, v, step), g in counted.waiting.items() if jid == journey_id]
    for v, step, group in sorted(mine, key=lambda item: (item[0], _path_order(item[1]))):
        steps_of = labels_of(journey_id, v)
        for path, text in steps_of.items():
            labels.setdefault(path, text)
        waiting.append(
            Waiting(step, steps_of.get(step, ""), v, group.count, group.first_wake, group.last_wake)
        )
    if config is not None:
        labels.update(step_labels(config))  # the configured version's words win
    totals: dict[str, int] = {}
    exited: dict[str, int] = {}
    steps: dict[str, dict[str, int]] = {}
    for what, n in sorted(counted.totals.get(journey_id, {}).items()):
        outcome, _, step = what.partition(":")
        if step:
            steps.setdefault(step, {})[outcome] = n
        elif outcome.startswith("exited_"):
            exited[outcome.removeprefix("exited_")] = n
        else:
            totals[outcome] = n
    return JourneyStatus(
        id=journey_id,
        configured=config is not None,
        version=version,
        waiting=tuple(waiting),
        totals=totals,
        exited=exited,
        steps=dict(sorted(steps.items(), key=lambda item: _path_order(item[0]))),
        labels=labels,
    )


def _path_order(path: str) -> list[tuple[int, str]]:
    """`2` before `10`, `3.then.1` before `3.else.1` (as written in the config)."""
    return [(int(p), "") if p.isdigit() else (0 if p == "then" else 1, p) for p in path.split(".")]


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


# -- trace: one person -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceLine:
    ms: int  # event time
    journey: str
    instance: str
    what: str  # entered, waiting, woke, branch, sent, late, capped, held_out, completed, exited
    step: str
    detail: str  # a message, `until …`, a branch, an exit reason, `held out`

    def to_json(self) -> dict[str, Any]:
        return {
            "time": iso_ms(self.ms),
            "journey": self.journey,
            "instance": self.instance,
            "what": self.what,
            "step": self.step,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class InFlight:
    journey: str
    version: str
    instance: str
    key: str  # "" per profile, else the triggering event's `key:` value (a cart id)
    step: str  # the step it runs when its wait ends
    label: str
    entered_ms: int
    wakes_ms: int | None
    held_out: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "journey": self.journey,
            "version": self.version,
            "instance": self.instance,
            "key": self.key,
            "next_step": self.step,
            "label": self.label,
            "entered": iso_ms(self.entered_ms),
            "wakes": _iso(self.wakes_ms),
            "held_out": self.held_out,
        }


@dataclass(frozen=True, slots=True)
class Trace:
    profile_id: str
    lines: tuple[TraceLine, ...]
    in_flight: tuple[InFlight, ...]
    totals: Mapping[str, Mapping[str, int]]  # journey -> outcome -> count (all time)
    trimmed: bool  # the log holds only the newest lines

    def to_json(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile_id,
            "log": [line.to_json() for line in self.lines],
            "log_trimmed": self.trimmed,
            "in_flight": [inst.to_json() for inst in self.in_flight],
            "totals": {j: dict(n) for j, n in self.totals.items()},
        }


def trace(profile_id: str, state: Mapping[str, Any] | None, labels_of: Labels) -> Trace:
    """A person's journeys from their profile's state (None: never in one)."""
    state = state or {}
    # Time order: a record behind event time (or a merge) can add a line before the last one;
    # the lines of one moment are in the order their steps ran (a stable sort keeps it).
    lines = tuple(TraceLine(*line) for line in sorted(state.get("log", []), key=_moment))
    in_flight = tuple(
        InFlight(
            journey=inst["j"],
            version=inst["v"],
            instance=iid,
            key=inst.get("k", ""),
            step=inst.get("at") or "",
            label=labels_of(inst["j"], inst["v"]).get(inst.get("at") or "", ""),
            entered_ms=inst["in"],
            wakes_ms=inst.get("due"),
            held_out=bool(inst.get("ho")),
        )
        for iid, inst in sorted(state.get("i", {}).items(), key=by_wake)
    )
    totals = {
        j: {what: n for what, n in sorted(counts.items()) if ":" not in what}
        for j, counts in sorted(state.get("n", {}).items())
    }
    return Trace(profile_id, lines, in_flight, totals, trimmed=len(lines) >= LOG_MAX)


def _moment(line: Sequence[Any]) -> Any:
    return line[0]


def labels_reader(store: Store, journeys: Iterable[JourneySettings]) -> Labels:
    """Step labels of a journey version: the configured one's, else the version kept in the
    store (nothing when neither holds it). Read once per version."""
    known: dict[tuple[str, str], Mapping[str, str]] = {
        (j.id, version_of(j)): step_labels(j) for j in journeys
    }

    def labels_of(journey_id: str, version: str) -> Mapping[str, str]:
        held = (journey_id, version)
        if held not in known:
            config = stored_version(store, journey_id, version)
            known[held] = {} if config is None else step_labels(config)
        return known[held]

    return labels_of
