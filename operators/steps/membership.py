"""Segments: a profile's rules evaluated when its inputs change or its timer comes due, the
memberships that flip, and the audience changes they emit. Memberships live in the profile
(`segs`); the timer of the next moment a windowed segment can flip in `operators.steps.timers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from config.settings import DestinationSettings
from operators import profile as prof
from operators.identity import Cluster, profile_id
from operators.payloads import payload, wants_of
from operators.segments import (
    SegmentIndex,
    Transition,
    change_id,
    due_at,
    evaluate,
    exit_all,
    next_flip,
    transitions,
)
from operators.steps.call import Call
from operators.steps.positions import Positions
from operators.steps.privacy import Consent
from operators.steps.profiles import Gone, Profiles
from operators.steps.stats import EngineStats, Published
from operators.steps.timers import Timers
from schemas.records import AudienceChange, Identity, Record

if TYPE_CHECKING:
    from operators.steps.journeys import Journeys


# Waits run before one event at most (each ends an instance's wait; a journey has no loops, so
# only a person with very many instances in flight could reach it; the rest run on the timer).
WAKES_MAX = 1000


class Membership:
    def __init__(
        self,
        *,
        index: SegmentIndex,
        profiles: Profiles,
        timers: Timers,
        positions: Positions,
        consent: Consent,
        stats: EngineStats,
        published: Published,
        destinations: Iterable[DestinationSettings] = (),
    ) -> None:
        self.index = index
        self.profiles = profiles
        self.timers = timers
        self.positions = positions
        self.consent = consent
        self.stats = stats
        self._published = published
        # Journeys (`operators.steps.journeys`), when the config has any: told of every
        # evaluation, to start, move on and end instances (set by the engine).
        self.journeys: Journeys | None = None
        # What the destinations personalize with (`operators.payloads`): nothing, and emitting
        # a change costs nothing more.
        self.wants = wants_of(destinations)
        self._personalized = bool(self.wants)
        # Brings a stale profile to edited definitions before a timer evaluates it (set by the
        # engine: `operators.steps.rollout`).
        self.upgrade: Callable[[Call, Identity, prof.Profile, int], prof.Profile] | None = None
        # With no record applied every input has its initial value whatever the time, so
        # which rules hold for an empty profile is known once.
        empty = prof.new_profile()
        self._true_when_empty = frozenset(
            seg for seg, held in evaluate(empty, index, index.all_ids(), 0).items() if held
        )

    def apply_record(
        self,
        call: Call,
        record: Record,
        canonical: Identity,
        *,
        cluster: Cluster | None,
        profile: prof.Profile,
        fresh: bool,
        merged: bool,
        duplicate: bool,
        at_ms: int,
    ) -> None:
        """A record applied to its profile, and the segments whose inputs it changed evaluated.

        A merged profile is evaluated against every rule. A new one only against the rules
        true for an empty profile (`profile.phone == null`) and those its record touches. An
        event applied before (its `_id`) makes no new profile, as with several processes,
        where it is never routed."""
        if duplicate and fresh and not merged:
            return
        index = self.index
        if merged:
            which: set[str] = set(index.all_ids())
        elif fresh:
            which = set(self._true_when_empty)
        else:
            which = set()
        reason = "merge" if merged else ""
        now_ms = self.positions.now_ms
        retime = False  # only if a segment reading a window is evaluated (see `evaluate`)
        if record.kind == "event":
            if self.positions.live and record.ts_ms is not None and record.ts_ms > now_ms:
                # A live event a little ahead of the wall clock (within time.max_future) is
                # evaluated at its own time, so its change is emitted now with its reason.
                now_ms = record.ts_ms
            if not duplicate:
                if self.journeys is not None and "j" in profile:
                    profile, retime = self._wake_before(call, canonical, cluster, profile, record)
                aggs, absents = index.candidates(record.event_type or "")
                profile, changed = prof.apply_event(profile, record, aggs, absents)
                which |= index.affected_by_inputs(changed)
                if index.untimed_windows and not index.untimed_windows.isdisjoint(changed):
                    # A windowed trait no rule reads has no timer to prune it: trimmed here.
                    profile = prof.prune(
                        profile, index.aggregates, index.absents, self.positions.now_ms
                    )
                reason = reason or f"event:{record.event_id}"
        else:
            profile, paths = prof.apply_attributes(profile, record)
            which |= index.affected_by_attributes(paths)
            reason = reason or f"profile:{record.origin.position}"
        self.evaluate(
            call,
            canonical,
            cluster=cluster,
            profile=profile,
            which=which,
            at_ms=at_ms,
            reason=reason,
            now_ms=now_ms,
            retime=retime,
            # An event applied before (its `_id`) is no cause: it starts no journey instance
            # again (a producer's retry would send a second reminder) nor fills a payload.
            record=None if duplicate else record,
        )

    def _wake_before(
        self,
        call: Call,
        canonical: Identity,
        cluster: Cluster | None,
        profile: prof.Profile,
        record: Record,
    ) -> tuple[prof.Profile, bool]:
        """Journey waits that end before this event's time end before the event is applied,
        though event time (the slowest partition) has not reached them yet: per profile, steps
        and events happen in event-time order, so 1 or 2 workers send the same. The earliest
        first, as often as one ends (a step after a wait may wait again, and end before the
        event too)."""
        assert self.journeys is not None
        retime = False
        for _ in range(WAKES_MAX):
            due = profile["j"].get("due")
            if due is None or record.ts_ms is None or due > record.ts_ms:
                break
            profile, moved = self.journeys.react(
                call,
                canonical=canonical,
                cluster=cluster,
                profile=profile,
                changes=(),
                record=None,
                at_ms=due,
                now_ms=due,
            )
            retime = retime or moved
            if profile["j"].get("due") == due:
                break  # nothing woke (never expected): the timer will
        return profile, retime

    def evaluate(
        self,
        call: Call,
        canonical: Identity,
        *,
        cluster: Cluster | None,
        profile: prof.Profile,
        which: set[str],
        at_ms: int,
        reason: str,
        now_ms: int | None = None,
        retime: bool = True,
        record: Record | None = None,
    ) -> prof.Profile:
        """Evaluate `which` segments, emit the transitions, and prune the windows and
        reschedule the profile's timer when a segment reading a window was evaluated (a
        windowed input or another input of it changed: when it next flips may have moved), or
        always with `retime` (a timer fired: the profile's timer is spent). `record`: the one
        that caused it (None: a timer, a merge, an edit of the audiences, an event applied
        before). Returns the profile as stored."""
        index, txn = self.index, call.txn
        stream_now = self.positions.now_ms
        now = stream_now if now_ms is None else now_ms
        changes: list[Transition] = []
        if which:
            results = evaluate(profile, index, which, now)
            retime = retime or not index.timed.isdisjoint(results)
            segs, changes = transitions(profile["segs"], results, at_ms)
            if changes:
                profile = {**profile, "segs": segs}
                if cluster is None:
                    cluster = self.profiles.cluster_of(txn, canonical, profile)
                self.emit(
                    call,
                    canonical,
                    cluster,
                    profile,
                    changes,
                    at_ms=at_ms,
                    reason=reason,
                    record=record,
                    now_ms=now,
                )
        journeys = self.journeys
        if journeys is not None:
            journey_now = now
            if record is not None and record.kind == "event" and record.ts_ms is not None:
                # Per profile, journeys run in event-time order: an event is judged as of its
                # own time, whatever the stream's. Ahead of it (another partition behind, on
                # several workers), a purchase ends a wait at once; behind it (this profile's
                # records reach its shard later than others'), a wait due after the event
                # runs after it, on the profile's timer. Waits due before it ran first
                # (`_wake_before`).
                journey_now = record.ts_ms
            profile, moved = journeys.react(
                call,
                canonical=canonical,
                cluster=cluster,
                profile=profile,
                # An audience edit's entries (reason `definition`) start no journey: nobody
                # was seen qualifying (as a journey added to a live audience waits for new
                # entries); a backfill would have found them long past (`late`).
                changes=() if reason == "definition" else changes,
                record=record,
                at_ms=at_ms,
                now_ms=journey_now,
            )
            retime = retime or moved
        if retime:
            # Pruned only up to the stream's event time: a live event evaluated at its own,
            # later time must not drop what a record of the same profile at now still reads.
            pruned_at = min(now, stream_now)
            profile = prof.prune(profile, index.aggregates, index.absents, pruned_at)
            due = next_flip(profile, index, now)
            waits = profile["j"].get("due") if "j" in profile else None
            if waits is not None and (due is None or waits < due):
                due = waits  # a journey's wait (`operators.steps.journeys`)
            if due != profile.get("timer"):
                self.timers.set(txn, canonical, profile.get("timer"), due)
                profile = {**profile, "timer": due}
        self.profiles.put(txn, canonical, profile)
        return profile

    def fire_timers(self, call: Call, upto_ms: int) -> None:
        for ts, canonical in self.timers.due(upto_ms):
            # The profile's own `timer` is the truth; the heap may hold superseded entries
            # (the profile moved, merged away or was rescheduled).
            profile = self.profiles.get(call.txn, canonical)
            if profile is None or profile.get("timer") != ts:
                continue
            self.timers.fired(call.txn, ts, canonical)
            profile = {**profile, "timer": None}
            # Only the segments whose windowed inputs change at this very moment (known before
            # an upgrade to edited definitions prunes what leaves the windows then).
            which = due_at(profile, self.index, ts)
            if self.upgrade is not None:
                profile = self.upgrade(call, canonical, profile, ts)
            self.stats.timers_fired += 1
            self.evaluate(
                call,
                canonical,
                cluster=None,
                profile=profile,
                which=which,
                at_ms=ts,
                reason="timer",
                now_ms=ts,
            )

    def remove(
        self,
        call: Call,
        canonical: Identity,
        cluster: Cluster,
        profile: prof.Profile,
        *,
        reason: str,
        at_ms: int,
        merged_into: Identity | None = None,
    ) -> None:
        """Every membership exits with `reason` (`merge` into `merged_into`, `delete`); the
        profile and its timer go."""
        _, exits = exit_all(profile["segs"], at_ms)
        self.emit(call, canonical, cluster, profile, exits, at_ms=at_ms, reason=reason)
        self.timers.set(call.txn, canonical, profile.get("timer"), None)
        gone = Gone(merged_into, cluster.by_namespace())
        self.profiles.delete(call.txn, canonical, gone)

    def emit(
        self,
        call: Call,
        canonical: Identity,
        cluster: Cluster,
        profile: prof.Profile,
        changes: Sequence[Transition],
        *,
        at_ms: int,
        reason: str,
        record: Record | None = None,
        now_ms: int | None = None,
    ) -> None:
        """The transitions as audience changes, with one payload for all of them when a
        destination personalizes (its traits read at `now_ms`, default the stream's time; its
        event the body of `record`)."""
        pid = profile_id(canonical)
        identities = cluster.by_namespace()
        denied = self.consent.denied(profile)
        extra: dict[str, Any] | None = None
        # A forgotten person's exits carry nothing of them but the identities to remove.
        if self._personalized and changes and reason != "delete":
            now = self.positions.now_ms if now_ms is None else now_ms
            body = record.body if record is not None and self.wants.event else None
            extra = payload(profile, self.index, now, body, self.wants)
        counts = self._published.changes
        out, wall_ms, read_ns = call.out, call.wall_ms, call.read_ns
        for change in changes:
            status: Literal["entered", "exited"] = "entered" if change.entered else "exited"
            counts[change.segment_id, status] = counts.get((change.segment_id, status), 0) + 1
            out.append(
                AudienceChange(
                    id=change_id(pid, change.segment_id, change.sequence),
                    segment_id=change.segment_id,
                    status=status,
                    profile_id=pid,
                    identities=identities,
                    event_time_ms=at_ms,
                    emitted_at_ms=wall_ms,
                    reason=reason,
                    sequence=change.sequence,
                    read_ns=read_ns,
                    consent_denied=denied,
                    payload=extra,
                )
            )
