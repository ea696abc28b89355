"""The stateful core: the steps of a record's path (`operators.steps`), called in order over
one transaction per Bytewax call, committed as one atomic WriteBatch with the applied input
offsets, the watermark and the outputs:

    positions -> privacy -> graph -> profiles (+ history) -> membership (+ timers)
      -> projection (with a `profiles` destination) -> outbox

An audience edited since the state was built is rolled out (`operators.steps.rollout`): a
stale profile is upgraded when touched, and the rest in batches (`roll`, `Kick`).

`Engine.process` is what the Bytewax step of one process calls with the records of one shard
key. All shards of a process share one store, so every cross-shard effect of a merge
(re-pointing members, moving the loser's profile) is applied in place. With several processes,
a "graph" engine links every record (`route`) and a "profile" engine per process applies the
profiles (`process_commands`); `operators.steps.exchange` carries what passes between them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

from config.settings import Settings
from operators import metrics
from operators import profile as prof
from operators.identity import Cluster, IdentityRules, Merge, Resolution
from operators.rules import compile_rules, compile_traits
from operators.segments import SegmentIndex
from operators.steps.call import Call, Output
from operators.steps.exchange import GRAPH_KEY, Exchange, FlowCounts
from operators.steps.graph import Graph
from operators.steps.history import History
from operators.steps.journeys import VERSIONS as JOURNEY_VERSIONS
from operators.steps.journeys import Journeys, journey_conditions
from operators.steps.membership import Membership
from operators.steps.outbox import Outbox
from operators.steps.positions import Positions
from operators.steps.privacy import Consent, Privacy
from operators.steps.profiles import PREFIX as PROFILES
from operators.steps.profiles import Profiles
from operators.steps.projection import Projection
from operators.steps.rollout import Rollout
from operators.steps.stats import EngineStats, Published
from operators.steps.timers import Timers
from operators.store import Store, Txn
from schemas.records import Adopt, Command, Forget, Identity, Kick, Record, Tick

Role = Literal["all", "graph", "profile"]


def build_index(settings: Settings) -> SegmentIndex:
    """The rules, traits and journeys' rules compiled (RuleErrors with every problem)."""
    traits = compile_traits([(t.name, t.value) for t in settings.traits])
    rules = compile_rules([(s.id, s.rule) for s in settings.segments], traits)
    conditions = journey_conditions(settings, traits) if settings.journeys else []
    return SegmentIndex(rules, traits, conditions)


class Engine:
    """`role` "all": one process applies everything in one step (`process`). With several
    processes, a "graph" engine applies the identity graph (`route`) and a "profile" engine
    (one per process, same store) the profiles and segments (`process_commands`). `live`:
    event time follows the wall clock (`operators.steps.positions`). `keep_outbox`: outputs are
    kept for re-sending (Bytewax recovery on). `partitions`: a replay's event partitions with
    records to read (`SOURCE/PARTITION`); event time waits until each has delivered."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        index: SegmentIndex | None = None,
        role: Role = "all",
        *,
        live: bool = False,
        keep_outbox: bool = True,
        partitions: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.role = role
        self.store = store
        self.index = index or build_index(settings)
        self.stats = EngineStats()
        self._published = Published(self.stats, records=role != "profile")
        self.counts = FlowCounts.load(store) if role == "profile" else FlowCounts()
        self.lock = threading.Lock()  # worker threads of one process share this engine
        shards, rules = settings.shards, IdentityRules.from_settings(settings)
        graph = role == "graph"
        lateness = settings.time.allowed_lateness_ms
        profile_sources = frozenset(s.name for s in settings.sources if s.kind == "profile")
        self.inputs = Positions(
            store,
            graph=graph,
            live=live,
            lateness_ms=lateness,
            profile_sources=profile_sources,
            # A profile engine's event time is the identity step's (several processes).
            expected=partitions if role != "profile" else frozenset(),
        )
        self.timers = Timers(store, held=not graph)
        self.outbox = Outbox(store, keep=keep_outbox)
        self.graph = Graph(rules, shards, self.stats)
        self.profiles = Profiles(rules, shards, self.stats)
        self.history = History(settings.profile.history, shards, store)
        consent = Consent(settings.privacy)
        self.privacy = Privacy(
            store=store,
            consent=consent,
            graph=self.graph,
            profiles=self.profiles,
            history=self.history,
            outbox=self.outbox,
            stats=self.stats,
        )
        self.membership = Membership(
            index=self.index,
            profiles=self.profiles,
            timers=self.timers,
            positions=self.inputs,
            consent=consent,
            stats=self.stats,
            published=self._published,
            destinations=settings.destinations,
        )
        self.privacy.membership = self.membership
        # Journeys (DESIGN §12): also with none configured while instances of removed ones
        # may be in flight (they end, reason `removed`). None: no per-record cost.
        self.journeys: Journeys | None = None
        if not graph and (
            settings.journeys or next(iter(store.scan(JOURNEY_VERSIONS)), None) is not None
        ):
            self.journeys = Journeys(
                store=store,
                settings=settings,
                index=self.index,
                profiles=self.profiles,
                consent=consent,
                history=self.history,
            )
            self.membership.journeys = self.journeys
        self.rollout = Rollout(
            store=store,
            index=self.index,
            history=self.history,
            membership=self.membership,
            positions=self.inputs,
            stats=self.stats,
            batch=settings.profile.rollout_batch,
            held=not graph,
        )
        if not graph:
            has_profiles = next(iter(store.scan(PROFILES)), None) is not None
            self.history.start(store, self.inputs.max_event_ms, has_profiles)
            self.membership.upgrade = self.rollout.upgrade
        # The profile projection (DESIGN §11), only when a destination takes it.
        projected = any(d.kind == "profiles" for d in settings.destinations)
        self.projection = (
            Projection(store, self.index, self.profiles, self.inputs)
            if projected and not graph
            else None
        )
        self.exchange = Exchange(
            index=self.index,
            positions=self.inputs,
            profiles=self.profiles,
            history=self.history,
            rollout=self.rollout,
            membership=self.membership,
            privacy=self.privacy,
            outbox=self.outbox,
            stats=self.stats,
            counts=self.counts,
        )

    # -- what the Bytewax steps call ----------------------------------------------------------

    def process(
        self, key: int, records: Sequence[Record | Forget | Kick], wall_ms: int
    ) -> list[Output]:
        """Apply the records routed to one Bytewax key, in one WriteBatch."""
        with self.lock:
            call = self._start(wall_ms)
            for record in records:
                if isinstance(record, Kick):
                    self.rollout.step(call, record.shard)
                    continue
                if isinstance(record, Forget):
                    origin = record.origin
                    if self.inputs.first_time(
                        call.txn, key, origin.source, origin.partition, origin.offset
                    ):
                        self.privacy.forget(call, record.identity, self.exchange.delete_time(call))
                    continue
                call.read_ns = record.read_ns
                self._one(call, key, record)
            call.read_ns = 0
            return self._commit(call, key)

    def route(self, records: Sequence[Record | Forget], wall_ms: int) -> list[Output]:
        """The identity step of several processes: link each record and say where it goes
        (`Routed`, `Move`, `Drop`; see `operators.steps.exchange`). Every record passes
        through this one key, in read order per partition, so the graph is linked exactly as
        one worker would."""
        with self.lock:
            call = self._start(wall_ms)
            for record in records:
                self.counts.raw_out += 1
                if isinstance(record, Forget):
                    self.exchange.route_forget(call, record)
                else:
                    self._one(call, GRAPH_KEY, record)
            self.counts.graph_out += len(call.out)
            return self._commit(call, GRAPH_KEY)

    def process_commands(
        self, key: int, items: Sequence[Command | Kick], wall_ms: int
    ) -> list[Output]:
        """A profile step of several processes: what the identity step routed to this shard
        key, and moved profiles read back from the feedback topic. Emits audience changes and
        `Adopt` commands (for the feedback topic)."""
        with self.lock:
            call = self._start(wall_ms)
            done: list[Output] = []
            for item in items:
                if isinstance(item, Kick):
                    self.rollout.step(call, item.shard)
                    continue
                if isinstance(item, Tick) and self.rollout.pending(item.shard):
                    # The end of a replay: the rollout is complete before the last timers.
                    done += self._commit(call, key)
                    done += self._roll_all(key, item.shard, wall_ms)
                    call = Call(Txn(self.store), wall_ms)
                if isinstance(item, Adopt):
                    self.exchange.adopt(call, key, item)
                else:
                    self.exchange.command(call, key, item)
            call.read_ns = 0
            return done + self._commit(call, key)

    def finish(self, key: int, wall_ms: int, shard: int | None = None) -> list[Output]:
        """End of input: the rollout of edited audiences completes (for `shard`, None: all),
        event time reaches the last event of every partition, and timers fire."""
        with self.lock:
            done = self._roll_all(key, shard, wall_ms)
            last = self.inputs.to_last_event()
            if last is None:
                return done
            call = Call(Txn(self.store), wall_ms)
            self.membership.fire_timers(call, last)
            return done + self._commit(call, key)

    def roll(self, key: int, shard: int | None, wall_ms: int) -> list[Output]:
        """One batch of the rollout of edited audiences over a shard's profiles (None: all)."""
        with self.lock:
            call = Call(Txn(self.store), wall_ms)
            self.rollout.step(call, shard)
            return self._commit(call, key)

    def rolling(self, shard: int | None) -> bool:
        """The rollout over a shard's profiles (None: all) is not complete."""
        with self.lock:
            return self.rollout.pending(shard)

    def _roll_all(self, key: int, shard: int | None, wall_ms: int) -> list[Output]:
        out: list[Output] = []
        more = self.rollout.pending(shard)
        while more:
            call = Call(Txn(self.store), wall_ms)
            more = self.rollout.step(call, shard)
            out += self._commit(call, key)
        return out

    def finish_route(self, wall_ms: int) -> list[Output]:
        """End of a replay on several processes: every shard's event time reaches the last
        event (timers fire there)."""
        with self.lock:
            last = self.inputs.to_last_event()
            if last is None:
                return []
            call = Call(Txn(self.store), wall_ms)
            self.exchange.ticks(call, last, self.settings.shards)
            self.counts.graph_out += len(call.out)
            return self._commit(call, GRAPH_KEY)

    def advance(self, key: int, event_ms: int, wall_ms: int) -> list[Output]:
        """Move event time forward with no record (live mode: the wall clock)."""
        with self.lock:
            if not self.inputs.move_to(event_ms):
                return []
            call = Call(Txn(self.store), wall_ms)
            self.membership.fire_timers(call, self.inputs.now_ms)
            return self._commit(call, key)

    def forget(self, key: int, identity: Identity, wall_ms: int) -> list[Output] | None:
        """GDPR delete of the whole cluster holding `identity` (`cdp forget`); None when the
        identity is unknown."""
        with self.lock:
            call = Call(Txn(self.store), wall_ms)
            found = self.privacy.forget(call, identity, self.exchange.delete_time(call))
            out = self._commit(call, key)
            return out if found else None

    # -- the outbox, for the Bytewax step's snapshots -----------------------------------------

    def outbox_seq(self, key: int) -> int:
        return self.outbox.seq(key)

    def outbox_after(self, key: int, seq: int) -> list[Output]:
        with self.lock:
            return self.outbox.after(key, seq)

    def prune_outbox(self, key: int, upto_seq: int) -> None:
        with self.lock:
            self.outbox.prune(key, upto_seq)

    # -- time, for the Bytewax step and the tools ---------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.inputs.now_ms

    @property
    def max_event_ms(self) -> int | None:
        return self.inputs.max_event_ms

    @property
    def positions(self) -> dict[str, int]:
        """The last offset applied per input partition (progress lines)."""
        return self.inputs.offsets

    def next_timer_ms(self) -> int | None:
        return self.timers.next_ms()

    # -- the path of one record ---------------------------------------------------------------

    def _start(self, wall_ms: int) -> Call:
        """A call begins; live, event time first catches up with the wall clock and the timers
        due by then fire, so a steady stream of records never holds a timer back."""
        call = Call(Txn(self.store), wall_ms)
        inputs = self.inputs
        if inputs.live and inputs.move_to(wall_ms):
            self.membership.fire_timers(call, inputs.now_ms)
        return call

    def _one(self, call: Call, key: int, record: Record) -> None:
        """One record in read order: event time, the offset check, then the record applied
        (the identity step routes it instead; it holds no timers, so none fire there)."""
        inputs, origin = self.inputs, record.origin
        part, at_record, after = inputs.observe(record)  # skipped records count too
        if inputs.advance(part, at_record):
            self.membership.fire_timers(call, inputs.now_ms)
        if inputs.first_time(call.txn, key, origin.source, origin.partition, origin.offset):
            self.stats.records += 1
            linked = self._link(call.txn, record)
            if linked is not None:
                if self.role == "graph":
                    self.exchange.route(call, record, *linked)
                else:
                    self._apply(call, record, *linked)
        else:
            self.stats.replayed += 1
        inputs.read(part, origin.offset)
        if after != at_record and inputs.advance(part, after):
            self.membership.fire_timers(call, inputs.now_ms)

    def _link(
        self, txn: Txn, record: Record
    ) -> tuple[Resolution, list[tuple[Merge, Cluster]]] | None:
        """The record's identities linked; None when it belongs to a deleted person."""
        if self.privacy.forgotten(txn, record):
            return None
        return self.graph.link(txn, record)

    def _apply(
        self,
        call: Call,
        record: Record,
        resolution: Resolution,
        losers: list[tuple[Merge, Cluster]],
    ) -> None:
        """One process: the losers of a merge exit and are merged into the survivor's profile,
        then the record is applied to it."""
        txn = call.txn
        now = self.inputs.now_ms
        at_ms = record.ts_ms if record.ts_ms is not None else now
        canonical = resolution.canonical
        rollout, history = self.rollout, self.history
        profile, fresh = self.profiles.load(txn, canonical)
        profile = rollout.current(call, canonical, profile, fresh=fresh, at_ms=now)
        merged = False  # a profile merged in: every rule is evaluated again
        index = self.index
        for merge, loser_cluster in losers:
            loser = self.profiles.get(txn, merge.loser)
            if loser is None:
                continue
            loser = rollout.upgrade(call, merge.loser, loser, now)
            merged = True
            self.membership.remove(
                call,
                merge.loser,
                loser_cluster,
                loser,
                reason="merge",
                at_ms=at_ms,
                merged_into=canonical,
            )
            profile = prof.merge_profiles(profile, loser, index.aggregates, index.absents)
            if self.journeys is not None:
                profile = self.journeys.merged(call, profile, loser, at_ms)
            profile = history.move(txn, merge.loser, loser, canonical, profile, now_ms=now)
        duplicate = record.kind == "event" and self.profiles.duplicate(txn, record)
        if record.kind == "event" and not duplicate:
            profile = history.add(txn, canonical, profile, record, now)
        self.membership.apply_record(
            call,
            record,
            canonical,
            cluster=resolution.cluster,
            profile=profile,
            fresh=fresh,
            merged=merged,
            duplicate=duplicate,
            at_ms=at_ms,
        )

    def _commit(self, call: Call, key: int) -> list[Output]:
        """State, offsets, watermark and the outputs, in one atomic write."""
        txn = call.txn
        if self.projection is not None:
            self.projection.emit(call)
        self.outbox.append(txn, key, call.out)
        self._published.publish()
        if self.role == "profile":
            self.counts.save(txn)
        if self.inputs.max_event_ms is not None and self.role != "graph":
            metrics.WATERMARK.set(self.inputs.max_event_ms / 1000)
        self.inputs.save(txn)
        txn.commit()
        return call.out
