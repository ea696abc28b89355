"""Journeys (DESIGN §12): instances started by a segment entry or an event, their steps run
at event time, their sends emitted through the outbox with deterministic ids.

Called at the end of every evaluation of a profile (`Membership.evaluate`: a record, a timer,
a merge, a rollout), so an instance sees the profile exactly as its segments do. An instance's
state is in the profile (`j`), so it moves with the profile on a merge and goes with it on a
GDPR delete; a waiting instance wakes with the profile's timer (the earliest of its segments'
next flip and its instances' waits), which is exact and survives a restart.

State in the profile, `j`:
| field | what |
| --- | --- |
| `i` | instances in flight: id -> `{j, v, k, at, due, in, ev, ho, n}` (1) |
| `r` | re-entry: journey -> key -> `[entries, last entry ms, [recent entry ms]]`, no expiry |
| `n` | totals: journey -> outcome -> count, and per send step `outcome:step` (3) |
| `c` | event times of the sends within the `journey_caps` window |
| `log` | `[ms, journey, instance, what, step, detail]`, the newest `LOG_MAX` (trace) |
| `due` | the earliest wait of an instance |

(1) journey, version, key, step to run next, waiting until, entered at, triggering event (kept
when a destination of its sends wants it), held out, n-th entry.
(3) a send's outcome (`sent`, `late`, `capped`, `held_out`) is counted twice: in total, and
for its step as `OUTCOME:STEP` (`sent:3.else.1`).

Keys:
| key | value | what |
| --- | --- | --- |
| `meta/journeys/v/ID/VERSION` | JSON | a journey's settings as of a version (2) |

(2) instances in flight finish on the version they started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from config.settings import JourneyCapSettings, JourneySettings, Settings
from operators import metrics
from operators import profile as prof
from operators.identity import Cluster, profile_id
from operators.journeys import (
    Journey,
    Step,
    by_wake,
    compile_journey,
    compile_journeys,
    entered,
    held_out,
    holds,
    instance_id,
    key_of,
    may_enter,
    merge_state,
    min_due,
    run,
    send_id,
)
from operators.payloads import payload, wants_of
from operators.rules import Aggregate
from operators.segments import SegmentIndex, Transition
from operators.steps.call import Call
from operators.steps.history import History
from operators.steps.privacy import Consent
from operators.steps.profiles import Profiles
from operators.store import Store, Txn
from schemas.records import Identity, JourneySend, Record, iso_ms

VERSIONS = b"meta/journeys/v/"
LOG_MAX = 50  # trace lines kept per profile (the totals in `n` are never trimmed)


def version_key(journey_id: str, version: str) -> bytes:
    return VERSIONS + f"{journey_id}/{version}".encode()


def journey_conditions(settings: Settings, traits: Mapping[str, Aggregate]) -> list[Any]:
    """The rules of every journey (for the segment index: their inputs are maintained)."""
    segments = [s.id for s in settings.segments]
    journeys = compile_journeys(settings.journeys, segments, traits)
    return [rule for j in journeys for rule in j.conditions]


class Journeys:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        index: SegmentIndex,
        profiles: Profiles,
        consent: Consent,
        history: History,
    ) -> None:
        self.store = store
        self.history = history
        self.index = index
        self.profiles = profiles
        self.consent = consent
        self._segments = [s.id for s in settings.segments]
        compiled = compile_journeys(settings.journeys, self._segments, index.traits)
        self.current = {j.id: j for j in compiled}
        self._versions: dict[tuple[str, str], Journey | None] = {
            (j.id, j.version): j for j in compiled
        }
        self._readable: dict[tuple[str, str], bool] = {}
        self.by_segment: dict[str, list[Journey]] = {}
        self.on_event: list[Journey] = []
        for journey in sorted(compiled, key=_rank):
            if journey.segment is not None:
                self.by_segment.setdefault(journey.segment, []).append(journey)
            else:
                self.on_event.append(journey)
        self._event_types = _event_types(self.on_event)
        self.caps: JourneyCapSettings | None = settings.journey_caps
        self.destinations = {d.name: d for d in settings.destinations}
        # What each destination personalizes a send with (`operators.payloads`).
        self.wants = {d.name: wants_of([d]) for d in settings.destinations}
        # Journeys whose sends want the triggering event: it is kept with the instance.
        self.keep_event = {
            j.id
            for j in compiled
            if any(self.wants[n.destination].event for n in j.nodes.values() if n.kind == "send")
        }
        self._save_versions(settings.journeys, compiled)

    def _save_versions(
        self, settings: Sequence[JourneySettings], compiled: Sequence[Journey]
    ) -> None:
        txn = Txn(self.store)
        for config, journey in zip(settings, compiled, strict=True):
            key = version_key(journey.id, journey.version)
            if txn.get(key) is None:
                txn.put_json(key, config.model_dump(mode="json", by_alias=True))
        txn.commit()

    # -- the hook in `Membership.evaluate` ------------------------------------------------------

    def react(
        self,
        call: Call,
        *,
        canonical: Identity,
        cluster: Cluster | None,
        profile: prof.Profile,
        changes: Sequence[Transition],
        record: Record | None,
        at_ms: int,
        now_ms: int,
    ) -> tuple[prof.Profile, bool]:
        """The profile's journeys after one evaluation: instances of removed or edited
        journeys end, `exit_when` ends instances at once, waits due by `now_ms` go on, and
        the segment entries and the event of this evaluation start instances. Returns the
        profile and whether its timer must be set again."""
        state = profile.get("j")
        triggered = self._triggered(changes, record)
        if not triggered and (state is None or self._quiet(state, profile, now_ms)):
            return profile, False  # nothing to do: the state is not even copied
        run_ = _Run(self, call, canonical=canonical, cluster=cluster, profile=profile, state=state)
        run_.settle(now_ms)
        for journey, body in triggered:
            event = body
            if journey.segment is not None and journey.id in self.keep_event:
                event = self.segment_event(call, canonical, record, at_ms)
            run_.enter(journey, event, at_ms)
        run_.flush()
        return run_.result()

    def segment_event(
        self, call: Call, canonical: Identity, record: Record | None, at_ms: int
    ) -> dict[str, Any] | None:
        """The event of an instance a segment entry started: the person's latest event at or
        before the entry (ties by event id), from the kept history. Whether the entry came
        with that event or on a timer as event time reached it (several workers), it is the
        same one. Without a history, the event applied (None on a timer)."""
        if self.history.on:
            return self.history.latest(call.txn, canonical, at_ms)
        return record.body if record is not None and record.kind == "event" else None

    def _quiet(self, state: dict[str, Any], profile: prof.Profile, now_ms: int) -> bool:
        """No instance in flight ends or wakes at `now_ms` (the common case of a record of
        someone waiting: only the exit rules are read)."""
        for inst in state.get("i", {}).values():
            current = self.current.get(inst["j"])
            if current is None or inst["v"] != current.version:
                return False  # removed or edited: `settle` decides
            due = inst.get("due")
            if due is not None and due <= now_ms:
                return False
            rule = current.exit_rule
            if rule is not None and holds(rule, profile, self.index, now_ms):
                return False
        return True

    def _triggered(
        self, changes: Sequence[Transition], record: Record | None
    ) -> list[tuple[Journey, dict[str, Any] | None]]:
        out: list[tuple[Journey, dict[str, Any] | None]] = []
        if self.by_segment:
            for change in changes:
                if change.entered:
                    # The event is found when the instance starts (`_Run.segment_event`).
                    out.extend((j, None) for j in self.by_segment.get(change.segment_id, ()))
        if self.on_event and record is not None and record.kind == "event":
            event_type = record.event_type or ""
            if self._event_types is None or event_type in self._event_types:
                body = record.body
                out.extend(
                    (j, body)
                    for j in self.on_event
                    if j.event is not None and j.event.matches(body)
                )
        if len(out) > 1:
            out.sort(key=lambda item: _rank(item[0]))
        return out

    def version(self, journey_id: str, version: str) -> Journey | None:
        """A version instances in flight started on (None: it can no longer be compiled, e.g.
        its trigger segment was removed)."""
        held = (journey_id, version)
        if held not in self._versions:
            raw = self.store.get(version_key(journey_id, version))
            journey = None
            if raw is not None:
                try:
                    config = JourneySettings.model_validate(orjson.loads(raw))
                    journey = compile_journey(config, self._segments, self.index.traits)
                except ValueError:
                    journey = None
            self._versions[held] = journey
        return self._versions[held]

    def readable(self, journey: Journey) -> bool:
        """Every input an old version's rules read is still kept (the index maintains the
        current config's inputs only)."""
        held = self._readable.get((journey.id, journey.version))
        if held is None:
            kept = self.index.aggregates
            held = all(a.key in kept for rule in journey.conditions for a in rule.aggregates)
            self._readable[journey.id, journey.version] = held
        return held

    def merged(
        self, call: Call, survivor: prof.Profile, loser: prof.Profile, at_ms: int
    ) -> prof.Profile:
        """Two profiles merged: their journey state in one (an instance of a journey and key
        both had in flight ends, reason `merged`)."""
        if "j" not in loser:
            return survivor
        state, ended = merge_state(survivor.get("j"), loser["j"], LOG_MAX)
        for iid, inst in ended:
            _count(state, inst["j"], "exited_merged")
            _log(state, (at_ms, inst["j"], iid, "exited", inst.get("at") or "", "merged"))
            metrics.JOURNEYS.labels(inst["j"], "", "exited_merged").inc()
        return {**survivor, "j": state}


def _rank(journey: Journey) -> tuple[int, str]:
    return -journey.priority, journey.id


def _event_types(journeys: Sequence[Journey]) -> frozenset[str] | None:
    """The event types any event trigger can match (None: some trigger matches any type)."""
    types: set[str] = set()
    for journey in journeys:
        assert journey.event is not None
        if journey.event.event_types is None:
            return None
        types |= journey.event.event_types
    return frozenset(types)


def _count(state: dict[str, Any], journey_id: str, what: str, n: int = 1) -> None:
    totals = state.setdefault("n", {}).setdefault(journey_id, {})
    totals[what] = totals.get(what, 0) + n


def _log(state: dict[str, Any], line: tuple[int, str, str, str, str, str]) -> list[Any]:
    """One trace line: (ms, journey, instance, what, step, detail)."""
    log = state.setdefault("log", [])
    entry = list(line)
    log.append(entry)
    if len(log) > LOG_MAX:
        del log[: len(log) - LOG_MAX]
    return entry


class _Run:
    """One profile's journeys through one evaluation: the state copied once, the sends of
    this moment gathered, then arbitrated by the cap and emitted together (`flush`)."""

    def __init__(
        self,
        journeys: Journeys,
        call: Call,
        *,
        canonical: Identity,
        cluster: Cluster | None,
        profile: prof.Profile,
        state: dict[str, Any] | None,
    ) -> None:
        self.j = journeys
        self.call = call
        self.canonical = canonical
        self.cluster = cluster
        self.profile = profile
        self.state: dict[str, Any] = orjson.loads(orjson.dumps(state)) if state else {}
        self.old_due = None if state is None else state.get("due")
        self.pid = profile_id(canonical)
        # Sends of this moment, each with its trace line (its outcome is known at `flush`).
        self.pending: list[tuple[Journey, str, dict[str, Any], Step, int, list[Any]]] = []

    @property
    def instances(self) -> dict[str, dict[str, Any]]:
        instances: dict[str, dict[str, Any]] = self.state.setdefault("i", {})
        return instances

    def settle(self, now_ms: int) -> None:
        """Instances of journeys removed or edited (`on_edit: exit`) end; `exit_when` ends
        instances; waits due by `now_ms` go on."""
        j, index = self.j, self.j.index
        verdicts: dict[tuple[str, str, int], bool] = {}
        for iid, inst in sorted(self.instances.items(), key=by_wake):
            current = j.current.get(inst["j"])
            if current is None:
                self.end(iid, inst, "removed", now_ms)
                continue
            if inst["v"] != current.version and current.exit_on_edit:
                self.end(iid, inst, "edited", now_ms)
                continue
            journey = current if inst["v"] == current.version else j.version(inst["j"], inst["v"])
            if journey is None:
                self.end(iid, inst, "removed", now_ms)
                continue
            if journey is not current and not j.readable(journey):
                # Its rules read inputs the edited config no longer keeps: judged on nothing,
                # a buyer could get the reminder. It ends as with `on_edit: exit`.
                self.end(iid, inst, "edited", now_ms)
                continue
            due: int | None = inst.get("due")
            woken = due is not None and due <= now_ms
            at: int = due if due is not None and woken else now_ms  # judged as of a wait's end
            if journey.exit_rule is not None:
                held = (journey.id, journey.version, at)
                if held not in verdicts:
                    verdicts[held] = holds(journey.exit_rule, self.profile, index, at)
                if verdicts[held]:
                    self.end(iid, inst, "exit_when", at)
                    continue
            if woken:
                _log(self.state, (at, journey.id, iid, "woke", inst["at"] or "", ""))
                self.go(journey, iid, inst, inst["at"], at)

    def enter(self, journey: Journey, event: dict[str, Any] | None, at_ms: int) -> None:
        key = key_of(journey, event)
        if key is None:
            return
        if any(i["j"] == journey.id and i["k"] == key for i in self.instances.values()):
            return  # one instance per journey and key at a time
        entries_by_key = self.state.setdefault("r", {}).setdefault(journey.id, {})
        held = entries_by_key.get(key)
        if not may_enter(journey, held, at_ms):
            _count(self.state, journey.id, "reentry_refused")
            metrics.JOURNEYS.labels(journey.id, "", "reentry_refused").inc()
            return
        entries = entered(journey, held, at_ms)
        entries_by_key[key] = entries
        iid = instance_id(self.pid, journey.id, key, entries[0])
        out = held_out(self.pid, journey.id, journey.holdout_bp)
        inst: dict[str, Any] = {
            "j": journey.id,
            "v": journey.version,
            "k": key,
            "at": journey.first,
            "due": None,
            "in": at_ms,
            "ev": event if journey.id in self.j.keep_event else None,
            "ho": out,
            "n": entries[0],
        }
        _count(self.state, journey.id, "entered")
        if out:
            _count(self.state, journey.id, "held_out_entered")
        _log(self.state, (at_ms, journey.id, iid, "entered", "", "held out" if out else ""))
        metrics.JOURNEYS.labels(journey.id, "", "entered").inc()
        self.instances[iid] = inst
        if journey.exit_rule is not None and holds(
            journey.exit_rule, self.profile, self.j.index, at_ms
        ):
            self.end(iid, inst, "exit_when", at_ms)
            return
        self.go(journey, iid, inst, journey.first, at_ms)

    def go(
        self, journey: Journey, iid: str, inst: dict[str, Any], start: str | None, at_ms: int
    ) -> None:
        taken, following, due = run(journey, start, self.profile, self.j.index, at_ms)
        for step in taken:
            node = step.node
            if node.kind == "send":
                line = _log(self.state, (at_ms, journey.id, iid, "send", node.path, node.message))
                self.pending.append((journey, iid, inst, step, at_ms, line))
            elif node.kind == "wait":
                detail = f"until {iso_ms(step.due_ms)}" if step.due_ms is not None else ""
                _log(self.state, (at_ms, journey.id, iid, "waiting", node.path, detail))
            else:
                _log(self.state, (at_ms, journey.id, iid, "branch", node.path, step.branch))
        inst["at"], inst["due"] = following, due
        if following is None:
            del self.instances[iid]
            _count(self.state, journey.id, "completed")
            _log(self.state, (at_ms, journey.id, iid, "completed", "", ""))
            metrics.JOURNEYS.labels(journey.id, "", "completed").inc()

    def end(self, iid: str, inst: dict[str, Any], reason: str, at_ms: int) -> None:
        del self.instances[iid]
        _count(self.state, inst["j"], f"exited_{reason}")
        _log(self.state, (at_ms, inst["j"], iid, "exited", inst.get("at") or "", reason))
        metrics.JOURNEYS.labels(inst["j"], inst.get("at") or "", f"exited_{reason}").inc()

    def flush(self) -> None:
        """The sends of this moment: held out and late ones recorded, the rest by priority
        under the cap (the losers recorded `capped`), then emitted."""
        if not self.pending:
            return
        self.pending.sort(key=lambda p: (*_rank(p[0]), p[1], p[3].node.path))
        caps = self.j.caps
        window: list[int] = self.state.get("c", [])
        for journey, iid, inst, step, at_ms, line in self.pending:
            path = step.node.path
            if caps is not None:
                window = [t for t in window if t > at_ms - caps.per_ms]
            if inst["ho"]:
                outcome = "held_out"
            elif not journey.late_send and self.call.wall_ms - at_ms > journey.max_lateness_ms:
                outcome = "late"
            elif caps is not None and len(window) >= caps.per_profile:
                outcome = "capped"
            else:
                outcome = "sent"
                if caps is not None:
                    window.append(at_ms)
                self.emit(journey, iid, inst, step, at_ms)
            _count(self.state, journey.id, f"{outcome}:{path}")
            _count(self.state, journey.id, outcome)
            line[3] = outcome
            metrics.JOURNEYS.labels(journey.id, path, outcome).inc()
        if caps is not None:
            self.state["c"] = window
        self.pending.clear()

    def emit(
        self, journey: Journey, iid: str, inst: dict[str, Any], step: Step, at_ms: int
    ) -> None:
        node, call = step.node, self.call
        metrics.JOURNEY_SEND_DELAY.observe(max(0, call.wall_ms - at_ms) / 1000)
        if self.cluster is None:
            self.cluster = self.j.profiles.cluster_of(call.txn, self.canonical, self.profile)
        call.out.append(
            JourneySend(
                id=send_id(journey.id, journey.version, iid, node.path),
                journey_id=journey.id,
                version=journey.version,
                instance_id=iid,
                step=node.path,
                message=node.message,
                destination=node.destination,
                profile_id=self.pid,
                identities=self.cluster.by_namespace(),
                event_time_ms=at_ms,
                emitted_at_ms=call.wall_ms,
                payload=self.payload(node.destination, inst, at_ms),
                read_ns=call.read_ns,
            )
        )

    def payload(self, destination: str, inst: dict[str, Any], at_ms: int) -> dict[str, Any] | None:
        """What the destination personalizes with: the profile as of the send, the event that
        started the instance."""
        wants = self.j.wants.get(destination)
        if not wants:
            return None
        return payload(self.profile, self.j.index, at_ms, inst.get("ev"), wants)

    def result(self) -> tuple[prof.Profile, bool]:
        state = self.state
        due = min_due(self.instances)
        state["due"] = due
        timer = self.profile.get("timer")
        retime = due != self.old_due or (due is not None and (timer is None or timer > due))
        return {**self.profile, "j": state}, retime
