"""Several processes: the exchange between the identity step (one Bytewax key that links every
record, in read order) and the profile steps (shard keys spread over the processes). The
identity step sends each record with its cluster (`Routed`), the loser of each merge a `Move`,
a GDPR delete a `Drop`, and at the end of a replay a `Tick` per shard. A profile that merged
away leaves through the feedback topic (`Adopt`) for its survivor's shard, which merges it once.

Keys:
| key | value | what |
| --- | --- | --- |
| `f/ID` | `ID` | where a profile that merged away went (late moves follow it) |
| `m/ID/MERGE_ID` | empty | a moved profile already merged into (or passed on from) ID |
| `meta/feedback-counts` | JSON | feedback commands made and applied, for ending a replay |
| `o/KKKK/$graph/0` | int | the identity step's outputs a profile key applied (positions) |
"""

from __future__ import annotations

from dataclasses import dataclass

from operators import profile as prof
from operators.identity import Cluster, Merge, Resolution
from operators.segments import SegmentIndex
from operators.steps.call import Call
from operators.steps.history import History
from operators.steps.membership import Membership
from operators.steps.outbox import Outbox
from operators.steps.positions import Positions
from operators.steps.privacy import Privacy
from operators.steps.profiles import Profiles
from operators.steps.rollout import Rollout
from operators.steps.stats import EngineStats
from operators.store import Store, Txn, decode
from schemas.records import (
    Adopt,
    Drop,
    Forget,
    GraphOutput,
    Identity,
    Move,
    Record,
    Routed,
    Tick,
    identity_str,
    parse_identity,
)

# The Bytewax key of the identity step (its offsets and outbox).
GRAPH_KEY = 9999
FEEDBACK_SOURCE = "$feedback"
GRAPH_SOURCE = "$graph"  # the identity step's output sequence, as a profile step's offset
FEEDBACK_COUNTS_KEY = b"meta/feedback-counts"


def forward_key(canonical: Identity) -> bytes:
    return f"f/{identity_str(canonical)}".encode()


def merged_key(merge_id: str, into: Identity) -> bytes:
    return f"m/{identity_str(into)}/{merge_id}".encode()


@dataclass
class FlowCounts:
    """Work done in this process, for ending a replay that runs on several processes: it is
    over when, summed over the processes, every record read was handled by the graph step, every
    graph output by a profile step and every feedback command by its profile step (DESIGN §3)."""

    raw_out: int = 0  # records the graph step handled (applied or skipped)
    graph_out: int = 0  # outputs of the graph step
    graph_done: int = 0  # graph outputs handled by a profile step
    fb_out: int = 0  # commands sent to the feedback topic
    fb_done: int = 0  # feedback commands handled

    @classmethod
    def load(cls, store: Store) -> FlowCounts:
        """Feedback commands made and applied are counted with the state (each counted once,
        however often a crash makes it travel), so the totals balance across restarts."""
        counts = cls()
        held = store.get(FEEDBACK_COUNTS_KEY)
        if held is not None:
            counts.fb_out, counts.fb_done = decode(held)
        return counts

    def save(self, txn: Txn) -> None:
        txn.put_json(FEEDBACK_COUNTS_KEY, [self.fb_out, self.fb_done])


class Exchange:
    def __init__(
        self,
        *,
        index: SegmentIndex,
        positions: Positions,
        profiles: Profiles,
        history: History,
        rollout: Rollout,
        membership: Membership,
        privacy: Privacy,
        outbox: Outbox,
        stats: EngineStats,
        counts: FlowCounts,
    ) -> None:
        self.index = index
        self.positions = positions
        self.profiles = profiles
        self.history = history
        self.rollout = rollout
        self.membership = membership
        self.privacy = privacy
        self.outbox = outbox
        self.stats = stats
        self.counts = counts

    # -- the identity step ----------------------------------------------------------------

    def route(
        self,
        call: Call,
        record: Record,
        resolution: Resolution,
        losers: list[tuple[Merge, Cluster]],
    ) -> None:
        """Where a linked record goes: every loser of a merge moves to the final survivor (an
        intermediate survivor lost too), then the record to its cluster's shard."""
        out, txn = call.out, call.txn
        canonical = resolution.canonical
        # The members travel only when the cluster changed (the profile step keeps them).
        members = resolution.cluster.members if resolution.cluster is not None else ()
        event_ms = self.positions.max_event_ms
        at_ms = record.ts_ms if record.ts_ms is not None else self.positions.now_ms
        for merge, _ in losers:
            seq = self.outbox.next_seq(GRAPH_KEY, out)
            out.append(Move(seq, merge.loser, canonical, members, merge.merge_id, at_ms, event_ms))
        if record.kind == "event" and self.profiles.duplicate(txn, record):
            return
        out.append(
            Routed(self.outbox.next_seq(GRAPH_KEY, out), canonical, members, event_ms, record)
        )

    def route_forget(self, call: Call, command: Forget) -> None:
        origin = command.origin
        if not self.positions.first_time(
            call.txn, GRAPH_KEY, origin.source, origin.partition, origin.offset
        ):
            return
        found = self.privacy.forget_graph(call.txn, command.identity, call.wall_ms)
        if found is not None:
            canonical, cluster = found
            seq = self.outbox.next_seq(GRAPH_KEY, call.out)
            call.out.append(Drop(seq, canonical, cluster.members, self.delete_time(call)))

    def ticks(self, call: Call, last_ms: int, shards: int) -> None:
        """End of a replay: every shard's event time reaches the last event (timers fire)."""
        for shard in range(shards):
            call.out.append(Tick(self.outbox.next_seq(GRAPH_KEY, call.out), shard, last_ms))

    def delete_time(self, call: Call) -> int:
        held = self.positions.max_event_ms
        return held if held is not None else call.wall_ms

    # -- a profile step ---------------------------------------------------------------------

    def command(self, call: Call, key: int, item: GraphOutput) -> None:
        self.counts.graph_done += 1
        # The graph step's outputs reach a key in their order: one sequence is the offset.
        if not self.positions.first_time(call.txn, key, GRAPH_SOURCE, 0, item.seq):
            return
        if isinstance(item, Drop):
            cluster = Cluster(members=item.members)
            self.privacy.forget_profile(call, item.canonical, cluster, item.at_ms)
            return
        # Event time as the graph step saw it: timers up to it fire (live: the wall clock
        # moves event time instead).
        event_ms = item.event_ms
        if not self.positions.live and event_ms is not None and self.positions.move_to(event_ms):
            self.membership.fire_timers(call, self.positions.now_ms)
        if isinstance(item, Move):
            self._move(call, item)
        elif isinstance(item, Routed):
            self._routed(call, item)

    def _routed(self, call: Call, item: Routed) -> None:
        record = item.record
        call.read_ns = record.read_ns
        self.stats.records += 1
        txn, now = call.txn, self.positions.now_ms
        profile, fresh = self.profiles.load(txn, item.canonical)
        profile = self.rollout.current(call, item.canonical, profile, fresh=fresh, at_ms=now)
        if item.members:
            profile = self.profiles.with_members(profile, item.members)
        if record.kind == "event":  # the identity step dropped duplicates
            profile = self.history.add(txn, item.canonical, profile, record, now)
        at_ms = record.ts_ms if record.ts_ms is not None else now
        self.membership.apply_record(
            call,
            record,
            item.canonical,
            cluster=None,
            profile=profile,
            fresh=fresh,
            merged=False,
            duplicate=False,
            at_ms=at_ms,
        )

    def _move(self, call: Call, move: Move) -> None:
        """The loser's side of a merge: exits, then the profile leaves through the feedback
        topic. A forwarding pointer stays, for moves into this profile still on their way."""
        call.read_ns = 0
        txn = call.txn
        txn.put_json(forward_key(move.loser), identity_str(move.survivor))
        loser = self.profiles.get(txn, move.loser)
        if loser is None:
            return
        loser = self.rollout.current(
            call, move.loser, loser, fresh=False, at_ms=self.positions.now_ms
        )
        cluster = self.profiles.cluster_of(txn, move.loser, loser)
        self.membership.remove(
            call,
            move.loser,
            cluster,
            loser,
            reason="merge",
            at_ms=move.at_ms,
            merged_into=move.survivor,
        )
        self.counts.fb_out += 1
        # Its kept events travel with it (and leave this process's store).
        events = self.history.ship(txn, move.loser)
        shipped: prof.Profile = {**loser, "timer": None, "history": events}
        call.out.append(Adopt(move.survivor, move.members, move.merge_id, shipped, move.at_ms))

    def adopt(self, call: Call, key: int, adopt: Adopt) -> None:
        """The survivor's side: merge the moved profile in once, re-evaluate every segment."""
        origin, txn = adopt.origin, call.txn
        if origin is not None and not self.positions.first_time(
            txn, key, origin.source, origin.partition, origin.offset
        ):
            return
        call.read_ns = 0
        done = merged_key(adopt.merge_id, adopt.survivor)
        if txn.get(done) is not None:
            return  # a copy already merged (or passed on) here
        txn.put(done, b"")
        self.counts.fb_done += 1
        onward = txn.get_json(forward_key(adopt.survivor))
        if onward is not None:  # the survivor merged away meanwhile: follow it
            self.counts.fb_out += 1
            target = parse_identity(onward)
            call.out.append(
                Adopt(target, adopt.members, adopt.merge_id, adopt.profile, adopt.at_ms)
            )
            return
        index = self.index
        survivor, fresh = self.profiles.load(txn, adopt.survivor)
        survivor = self.rollout.current(
            call, adopt.survivor, survivor, fresh=fresh, at_ms=self.positions.now_ms
        )
        moved = dict(adopt.profile)
        events = moved.pop("history", None) or []
        profile = prof.merge_profiles(survivor, moved, index.aggregates, index.absents)
        if self.membership.journeys is not None:
            profile = self.membership.journeys.merged(call, profile, moved, adopt.at_ms)
        profile = self.history.adopt(
            txn,
            adopt.survivor,
            profile,
            events,
            hist=moved.get("hist"),
            now_ms=self.positions.now_ms,
        )
        profile = self.rollout.merged_in(txn, adopt.survivor, profile, moved, self.positions.now_ms)
        profile = self.profiles.with_members(profile, adopt.members)
        self.membership.evaluate(
            call,
            adopt.survivor,
            cluster=None,
            profile=profile,
            which=set(index.all_ids()),
            at_ms=adopt.at_ms,
            reason="merge",
        )
