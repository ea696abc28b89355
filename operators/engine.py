"""The stateful core of the pipeline: identity, profile and segments for a batch of records.

`Engine.process` is what the Bytewax step calls with the records of one shard key. It reads
and writes state only through a `Txn`, so each call is one atomic WriteBatch that carries the
applied input offsets too: a record re-delivered after a crash is recognised and skipped.

All shards of a process share one store, so with one worker every cross-shard effect of a
merge (re-pointing members, moving the loser's profile) is applied in place.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal

from config.settings import Settings
from operators import metrics
from operators import profile as prof
from operators.identity import Cluster, IdentityRules, Merge, Resolution, profile_id, resolve
from operators.rules import compile_rules
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
from operators.store import (
    GRAPH_PARTITIONS_KEY,
    GRAPH_WATERMARK_KEY,
    PARTITIONS_KEY,
    WATERMARK_KEY,
    Keys,
    Store,
    Txn,
    decode,
    encode,
    parse_timer_key,
)
from schemas.records import (
    Adopt,
    AudienceChange,
    Command,
    Drop,
    Forget,
    GraphOutput,
    Identity,
    Move,
    Record,
    Routed,
    Tick,
    identity_str,
    iso_ms,
    output_from_stored,
    parse_identity,
)

# The Bytewax key of the identity step when several processes run (its offsets and outbox).
GRAPH_KEY = 9999
FEEDBACK_SOURCE = "$feedback"
GRAPH_SOURCE = "$graph"  # the graph step's output sequence, as a profile step's input offset
FEEDBACK_COUNTS_KEY = b"meta/feedback-counts"
Output = AudienceChange | Command


@dataclass
class EngineStats:
    records: int = 0
    replayed: int = 0  # re-delivered records skipped by offset
    duplicates: int = 0  # events skipped by `_id`
    merges: int = 0
    conflicts: int = 0
    timers_fired: int = 0
    forgotten: int = 0  # records dropped because their person was deleted (tombstone)
    deleted: int = 0  # clusters deleted (GDPR)
    changes: Counter[str] = field(default_factory=Counter)

    # The Prometheus counter of each count. The profile step of several processes publishes
    # neither `records` nor `replayed`: the identity step counts each record read once.
    METRICS: ClassVar[dict[str, Any]] = {
        "records": metrics.APPLIED,
        "replayed": metrics.REPLAYED,
        "duplicates": metrics.DUPLICATES,
        "merges": metrics.LINKS,
        "timers_fired": metrics.TIMERS,
        "forgotten": metrics.FORGOTTEN,
        "deleted": metrics.DELETES,
    }


class _Published:
    """Moves the engine's counts to Prometheus once a call, not one `inc` (and lock) a record
    or an audience change."""

    def __init__(self, stats: EngineStats, *, records: bool) -> None:
        self._stats = stats
        self._counters = {
            name: counter
            for name, counter in EngineStats.METRICS.items()
            if records or name not in ("records", "replayed")
        }
        self._seen = {name: 0 for name in self._counters}
        self.changes: dict[tuple[str, str], int] = {}  # (segment, status) -> count, this call

    def publish(self) -> None:
        stats = self._stats
        for name, counter in self._counters.items():
            now = getattr(stats, name)
            if now != self._seen[name]:
                counter.inc(now - self._seen[name])
                self._seen[name] = now
        if self.changes:
            for (segment, status), n in self.changes.items():
                stats.changes[f"{segment}:{status}"] += n
                metrics.changes(segment, status).inc(n)
            self.changes.clear()


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


class _PartitionRun:
    """Which records of one partition (by read order) have been applied in this run."""

    __slots__ = ("next_seq", "pending", "safe_ms")

    def __init__(self) -> None:
        self.next_seq = 1
        self.pending: dict[int, int | None] = {}
        self.safe_ms: int | None = None

    def applied(self, seq: int, ts_ms: int | None) -> tuple[int | None, int | None]:
        """Mark `seq` applied. Returns the highest event time over the applied prefix up to
        `seq` (unchanged while earlier records wait) and over the whole applied prefix."""
        self.pending[seq] = ts_ms
        at_record = self.safe_ms
        while self.next_seq in self.pending:
            ts = self.pending.pop(self.next_seq)
            if ts is not None and (self.safe_ms is None or ts > self.safe_ms):
                self.safe_ms = ts
            if self.next_seq == seq:
                at_record = self.safe_ms
            self.next_seq += 1
        return at_record, self.safe_ms


@lru_cache(maxsize=1 << 12)
def _partition_name(source: str, partition: int) -> str:
    return f"{source}/{partition}"


class _Graph:
    """The identity graph as `resolve` reads it, through the transaction."""

    def __init__(self, txn: Txn, keys: Keys) -> None:
        self.txn = txn
        self.keys = keys

    def canonical(self, identity: Identity) -> Identity | None:
        raw = self.txn.get_json(self.keys.pointer(identity))
        return None if raw is None else parse_identity(raw)

    def cluster(self, canonical: Identity) -> Cluster | None:
        raw = self.txn.get_json(self.keys.cluster(canonical))
        return None if raw is None else Cluster.from_json(raw)

    def members(self, canonical: Identity) -> Cluster | None:
        """The cluster with its members only (what outputs name), not its links."""
        raw = self.txn.get_json(self.keys.cluster(canonical))
        return None if raw is None else Cluster(tuple((m[0], m[1]) for m in raw["members"]))


def build_index(settings: Settings) -> SegmentIndex:
    return SegmentIndex(compile_rules([(s.id, s.rule) for s in settings.segments]))


Role = Literal["all", "graph", "profile"]


class Engine:
    """`role` "all": one process applies everything in one step (`process`). With several
    processes, a "graph" engine applies the identity graph (`route`) and a "profile" engine
    (one per process, same store) the profiles and segments (`process_commands`)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        index: SegmentIndex | None = None,
        role: Role = "all",
        *,
        live: bool = False,
    ) -> None:
        self.settings = settings
        self.role = role
        # Live: event time is the wall clock less the allowed lateness, records or not; a
        # replay's event time is the records' own (the lowest partition's latest).
        self.live = live
        graph = role == "graph"
        self._watermark_key = GRAPH_WATERMARK_KEY if graph else WATERMARK_KEY
        self._partitions_key = GRAPH_PARTITIONS_KEY if graph else PARTITIONS_KEY
        self.store = store
        self.keys = Keys(settings.shards)
        self.rules = IdentityRules.from_settings(settings)
        self.index = index or build_index(settings)
        self.lateness_ms = settings.time.allowed_lateness_ms
        self.stats = EngineStats()
        self._published = _Published(self.stats, records=role != "profile")
        self.counts = FlowCounts()
        # Feedback commands made and applied are counted with the state (each counted once,
        # however often a crash makes it travel), so the totals balance across restarts.
        held = store.get(FEEDBACK_COUNTS_KEY) if role == "profile" else None
        if held is not None:
            self.counts.fb_out, self.counts.fb_done = decode(held)
        # With no record applied every input has its initial value whatever the time, so
        # which rules hold for an empty profile is known once.
        empty = prof.new_profile()
        self._true_when_empty = frozenset(
            seg
            for seg, held in evaluate(empty, self.index, self.index.all_ids(), 0).items()
            if held
        )
        self.lock = threading.Lock()  # worker threads of one process share this engine
        # Outputs are kept until a durable snapshot covers them; without Bytewax recovery
        # nothing would ever prune them, and nothing would resend them either.
        self.keep_outbox = True
        self._read_ns = 0  # read time of the record being applied, stamped on its changes
        raw = store.get(self._watermark_key)
        self.max_event_ms: int | None = None if raw is None else int(raw)
        parts = store.get(self._partitions_key)
        self._partition_max: dict[str, int] = {} if parts is None else decode(parts)
        self._runs: dict[str, _PartitionRun] = {}
        self.positions: dict[str, int] = {}  # last offset applied per partition (progress)
        self._tombstones = next(iter(store.scan(b"d/")), None) is not None
        self._seqs: dict[int, int] = {}
        self._timers: list[tuple[int, str, str]] = [  # (time, namespace, value)
            (ts, *canon)
            for ts, canon in (parse_timer_key(k) for k, _ in store.scan(b"t/"))
            if not graph
        ]
        heapq.heapify(self._timers)

    # -- time ------------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """Event time: the watermark, less the allowed lateness (0 before any event)."""
        return 0 if self.max_event_ms is None else self.max_event_ms - self.lateness_ms

    def _observe(self, record: Record) -> tuple[str, int | None, int | None]:
        """Event time per input partition, as `(partition, at_record, after)`.

        A partition's event time is the highest event time among the records read before
        every one not yet applied (records carry their read order, `seq`): with several
        workers, records of one partition may be applied out of read order, and event time
        must not run ahead of a record still waiting. `at_record` is the partition's event
        time up to and including this record (what it is evaluated at), `after` includes the
        records read after it that were already applied.
        """
        part = _partition_name(record.origin.source, record.origin.partition)
        if not record.seq:
            return part, record.ts_ms, record.ts_ms
        run = self._runs.setdefault(part, _PartitionRun())
        return (part, *run.applied(record.seq, record.ts_ms))

    def _advance(self, part: str, ts_ms: int | None) -> bool:
        """Raise a partition's event time; the watermark is the lowest over the partitions,
        so a replay never treats events as late because partitions are read at different
        speeds. Returns True when the watermark moved (never live: the wall clock moves it,
        so no record's clock can drag everyone's time)."""
        if ts_ms is None or ts_ms <= self._partition_max.get(part, -1):
            return False
        self._partition_max[part] = ts_ms
        if self.live:
            return False
        low = min(self._partition_max.values())
        if self.max_event_ms is not None and low <= self.max_event_ms:
            return False
        self.max_event_ms = low
        return True

    # -- the step --------------------------------------------------------------------------

    def process(self, key: int, records: Sequence[Record | Forget], wall_ms: int) -> list[Output]:
        """Apply the records routed to one Bytewax key, in one WriteBatch."""
        with self.lock:
            txn = Txn(self.store)
            out: list[Output] = []
            self._follow_wall(txn, wall_ms, out)
            for record in records:
                if isinstance(record, Forget):
                    self._forget_command(txn, key, record, wall_ms, out)
                    continue
                self._read_ns = record.read_ns
                self._process_one(txn, key, record, wall_ms, out)
            self._read_ns = 0
            self._commit(txn, key, out)
            return out

    def finish(self, key: int, wall_ms: int) -> list[Output]:
        """End of input: event time reaches the last event of every partition; timers fire."""
        with self.lock:
            last = self._to_last_event()
            if last is None:
                return []
            txn = Txn(self.store)
            out: list[Output] = []
            self._fire_timers(txn, last, wall_ms, out)
            self._commit(txn, key, out)
            return out

    def _to_last_event(self) -> int | None:
        """End of input: event time jumps to the last event of any partition (None: none)."""
        if not self._partition_max:
            return None
        last = max(self._partition_max.values())
        if self.max_event_ms is None or last > self.max_event_ms:
            self.max_event_ms = last
        return last

    def advance(self, key: int, event_ms: int, wall_ms: int) -> list[Output]:
        """Move event time forward with no record (live mode: the wall clock)."""
        with self.lock:
            if self.max_event_ms is not None and event_ms <= self.max_event_ms:
                return []
            self.max_event_ms = event_ms
            txn = Txn(self.store)
            out: list[Output] = []
            self._fire_timers(txn, self.now_ms, wall_ms, out)
            self._commit(txn, key, out)
            return out

    def _follow_wall(self, txn: Txn, wall_ms: int, out: list[Output]) -> None:
        """Live: before a batch, event time catches up with the wall clock and the timers due
        by then fire, so a steady stream of records never holds a timer back."""
        if self.live and (self.max_event_ms is None or wall_ms > self.max_event_ms):
            self.max_event_ms = wall_ms
            self._fire_timers(txn, self.now_ms, wall_ms, out)

    def next_timer_ms(self) -> int | None:
        """Event time of the earliest timer held (it may have been superseded since)."""
        return self._timers[0][0] if self._timers else None

    # -- the outbox: at-least-once output across crashes ------------------------------------

    def _commit(self, txn: Txn, key: int, out: Sequence[Output]) -> None:
        """State, offsets, watermark and the outputs, in one atomic write."""
        if out:
            seq = self.outbox_seq(key)
            for item in out:
                seq += 1
                if self.keep_outbox:
                    txn.put(Keys.outbox(key, seq), encode(item.to_stored()))
            txn.put(Keys.outbox_seq(key), str(seq).encode())
            self._seqs[key] = seq
        self._published.publish()
        if self.role == "profile":
            txn.put_json(FEEDBACK_COUNTS_KEY, [self.counts.fb_out, self.counts.fb_done])
        if self.max_event_ms is not None:
            if self.role != "graph":
                metrics.WATERMARK.set(self.max_event_ms / 1000)
            txn.put(self._watermark_key, str(self.max_event_ms).encode())
            txn.put_json(self._partitions_key, dict(self._partition_max))
        txn.commit()

    def outbox_seq(self, key: int) -> int:
        """The sequence number of the last output of this key (0: none yet)."""
        if key not in self._seqs:
            raw = self.store.get(Keys.outbox_seq(key))
            self._seqs[key] = 0 if raw is None else int(raw)
        return self._seqs[key]

    def outbox_after(self, key: int, seq: int) -> list[Output]:
        """Outputs after `seq`: what a resumed worker re-emits (consumers dedup by id)."""
        with self.lock:
            start = Keys.outbox(key, seq + 1)
            prefix = Keys.outbox_prefix(key)
            return [
                output_from_stored(decode(raw)) for k, raw in self.store.scan(prefix) if k >= start
            ]

    def prune_outbox(self, key: int, upto_seq: int) -> None:
        """Forget outputs at or before a snapshot Bytewax has made durable."""
        if upto_seq > 0:
            with self.lock:
                self.store.delete_range(Keys.outbox_prefix(key), Keys.outbox(key, upto_seq + 1))

    def _process_one(
        self, txn: Txn, key: int, record: Record, wall_ms: int, out: list[Output]
    ) -> None:
        """One record in read order: event time, the offset check, then the record applied
        (the graph step routes it instead; it holds no timers, so none fire there)."""
        origin = record.origin
        part, at_record, after = self._observe(record)  # skipped records count too
        if self._advance(part, at_record):
            self._fire_timers(txn, self.now_ms, wall_ms, out)
        if self._first_time(txn, key, origin.source, origin.partition, origin.offset):
            self.stats.records += 1
            if self.role == "graph":
                self._route_record(txn, record, out)
            else:
                self._apply(txn, record, wall_ms, out)
        self.positions[part] = max(self.positions.get(part, -1), origin.offset)
        if after != at_record and self._advance(part, after):
            self._fire_timers(txn, self.now_ms, wall_ms, out)

    def _link(
        self, txn: Txn, record: Record
    ) -> tuple[Resolution, list[tuple[Merge, Cluster]]] | None:
        """Apply a record's identities to the graph. Returns the resolution and the merges whose
        loser was a cluster before, with that cluster (a new identity joining has no profile
        to merge); None when the record belongs to a deleted person."""
        if self._forgotten(txn, record):
            self.stats.forgotten += 1
            return None
        graph = _Graph(txn, self.keys)
        position = record.origin.position
        resolution = resolve(graph, self.rules, record.identities, position, record.ts_ms)
        losers = [(m, graph.cluster(m.loser)) for m in resolution.merges]
        self._write_graph(txn, resolution)
        if resolution.merges:
            self.stats.merges += len(resolution.merges)
            if resolution.cluster is not None:
                metrics.CLUSTER_SIZE.observe(len(resolution.cluster.members))
        return resolution, [(m, c) for m, c in losers if c is not None]

    def _apply(self, txn: Txn, record: Record, wall_ms: int, out: list[Output]) -> None:
        linked = self._link(txn, record)
        if linked is None:
            return
        resolution, losers = linked
        at_ms = record.ts_ms if record.ts_ms is not None else self.now_ms
        canonical = resolution.canonical
        profile, fresh = self._profile(txn, canonical)
        merged = False  # a profile merged in: every rule is evaluated again
        for merge, loser_cluster in losers:
            loser_profile = txn.get_json(self.keys.profile(merge.loser))
            if loser_profile is None:
                continue
            merged = True
            self._exit_merged(
                txn,
                merge.loser,
                loser_cluster,
                loser_profile,
                at_ms=at_ms,
                wall_ms=wall_ms,
                out=out,
            )
            profile = prof.merge_profiles(
                profile, loser_profile, self.index.aggregates, self.index.absents
            )
        duplicate = record.kind == "event" and self._duplicate(txn, record)
        self._apply_to_profile(
            txn,
            record,
            canonical,
            cluster=resolution.cluster,
            profile=profile,
            fresh=fresh,
            merged=merged,
            duplicate=duplicate,
            at_ms=at_ms,
            wall_ms=wall_ms,
            out=out,
        )

    def _exit_merged(
        self,
        txn: Txn,
        loser: Identity,
        cluster: Cluster,
        profile: prof.Profile,
        *,
        at_ms: int,
        wall_ms: int,
        out: list[Output],
    ) -> None:
        """The loser of a merge: its memberships exit (reason `merge`), its profile goes."""
        self._remove_profile(
            txn, loser, cluster, profile, reason="merge", at_ms=at_ms, wall_ms=wall_ms, out=out
        )

    def _remove_profile(
        self,
        txn: Txn,
        canonical: Identity,
        cluster: Cluster,
        profile: prof.Profile,
        *,
        reason: str,
        at_ms: int,
        wall_ms: int,
        out: list[Output],
    ) -> None:
        """Every membership exits with `reason`; the profile and its timer go."""
        _, exits = exit_all(profile["segs"], at_ms)
        self._emit(
            out,
            canonical,
            cluster=cluster,
            profile=profile,
            changes=exits,
            at_ms=at_ms,
            wall_ms=wall_ms,
            reason=reason,
        )
        self._set_timer(txn, canonical, profile.get("timer"), None)
        txn.delete(self.keys.profile(canonical))

    def _first_time(self, txn: Txn, key: int, source: str, partition: int, offset: int) -> bool:
        """Whether this key applies input `offset` of (source, partition) for the first time
        (and records it, in the same WriteBatch as what it changes). Inputs reach a key in
        offset order, so the highest applied offset is enough."""
        offset_key = Keys.offset(key, source, partition)
        applied = txn.get_json(offset_key)
        if applied is not None and offset <= applied:
            self.stats.replayed += 1
            return False
        txn.put_json(offset_key, offset)
        return True

    def _duplicate(self, txn: Txn, record: Record) -> bool:
        """An event whose `_id` was applied before (marks it applied otherwise)."""
        seen_key = Keys.seen(record.event_id or "")
        if txn.get(seen_key) is not None:
            self.stats.duplicates += 1
            return True
        txn.put(seen_key, b"")
        return False

    def _apply_to_profile(
        self,
        txn: Txn,
        record: Record,
        canonical: Identity,
        *,
        cluster: Cluster | None,
        profile: prof.Profile,
        fresh: bool,
        merged: bool,
        duplicate: bool,
        at_ms: int,
        wall_ms: int,
        out: list[Output],
    ) -> None:
        # A merged profile is evaluated against every rule. A new one only against the rules
        # true for an empty profile (`profile.phone == null`) and those its record touches.
        if merged:
            which: set[str] = set(self.index.all_ids())
        elif fresh:
            which = set(self._true_when_empty)
        else:
            which = set()
        reason = "merge" if merged else ""
        now_ms = self.now_ms
        if record.kind == "event":
            if self.live and record.ts_ms is not None and record.ts_ms > now_ms:
                # A live event a little ahead of the wall clock (within time.max_future) is
                # evaluated at its own time, so its change is emitted now with its reason.
                now_ms = record.ts_ms
            if not duplicate:
                aggs, absents = self.index.candidates(record.event_type or "")
                profile, changed = prof.apply_event(profile, record, aggs, absents)
                which |= self.index.affected_by_inputs(changed)
                reason = reason or f"event:{record.event_id}"
        else:
            profile, paths = prof.apply_attributes(profile, record)
            which |= self.index.affected_by_attributes(paths)
            reason = reason or f"profile:{record.origin.position}"
        self._evaluate(
            txn,
            canonical,
            cluster=cluster,
            profile=profile,
            which=which,
            at_ms=at_ms,
            wall_ms=wall_ms,
            reason=reason,
            out=out,
            now_ms=now_ms,
            retime=False,  # only if a segment reading a window is evaluated (see `_evaluate`)
        )

    def _evaluate(
        self,
        txn: Txn,
        canonical: Identity,
        *,
        cluster: Cluster | None,
        profile: prof.Profile,
        which: set[str],
        at_ms: int,
        wall_ms: int,
        reason: str,
        out: list[Output],
        now_ms: int | None = None,
        retime: bool = True,
    ) -> None:
        """Evaluate `which` segments, emit the transitions, and prune the windows and
        reschedule the profile's timer when a segment reading a window was evaluated (a
        windowed input or another input of it changed: when it next flips may have moved), or
        always with `retime` (a timer fired: the profile's timer is spent)."""
        now = self.now_ms if now_ms is None else now_ms
        if which:
            results = evaluate(profile, self.index, which, now)
            retime = retime or not self.index.timed.isdisjoint(results)
            segs, changes = transitions(profile["segs"], results, at_ms)
            if changes:
                profile = {**profile, "segs": segs}
                if cluster is None:
                    cluster = self._cluster_of(txn, canonical, profile)
                self._emit(
                    out,
                    canonical,
                    cluster=cluster,
                    profile=profile,
                    changes=changes,
                    at_ms=at_ms,
                    wall_ms=wall_ms,
                    reason=reason,
                )
        if retime:
            # Pruned only up to the stream's event time: a live event evaluated at its own,
            # later time must not drop what a record of the same profile at now still reads.
            pruned_at = min(now, self.now_ms)
            profile = prof.prune(profile, self.index.aggregates, self.index.absents, pruned_at)
            due = next_flip(profile, self.index, now)
            if due != profile.get("timer"):
                self._set_timer(txn, canonical, profile.get("timer"), due)
                profile = {**profile, "timer": due}
        txn.put_json(self.keys.profile(canonical), profile)

    # -- timers ----------------------------------------------------------------------------

    def _set_timer(self, txn: Txn, canonical: Identity, old: int | None, new: int | None) -> None:
        if old is not None:
            txn.delete(Keys.timer(old, canonical))
        if new is not None:
            txn.put(Keys.timer(new, canonical), b"")
            heapq.heappush(self._timers, (new, *canonical))

    def _fire_timers(self, txn: Txn, upto_ms: int, wall_ms: int, out: list[Output]) -> None:
        while self._timers and self._timers[0][0] <= upto_ms:
            ts, namespace, value = heapq.heappop(self._timers)
            canonical = (namespace, value)
            # The profile's own `timer` is the truth; the heap may hold superseded entries
            # (the profile moved, merged away or was rescheduled).
            profile = txn.get_json(self.keys.profile(canonical))
            if profile is None or profile.get("timer") != ts:
                continue
            txn.delete(Keys.timer(ts, canonical))
            profile = {**profile, "timer": None}
            self.stats.timers_fired += 1
            self._evaluate(
                txn,
                canonical,
                cluster=None,
                profile=profile,
                # Only the segments whose windowed inputs change at this very moment.
                which=due_at(profile, self.index, ts),
                at_ms=ts,
                wall_ms=wall_ms,
                reason="timer",
                out=out,
                now_ms=ts,
            )

    # -- privacy ---------------------------------------------------------------------------

    def _consent_denied(self, profile: prof.Profile) -> bool:
        privacy = self.settings.privacy
        values = prof.attribute_values(profile, privacy.consent_attribute)
        return any(str(v).lower() in privacy.denied for v in values)

    def _grants_consent(self, record: Record) -> bool:
        privacy = self.settings.privacy
        node: Any = record.body
        for part in privacy.consent_attribute.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node is not None and str(node).lower() in privacy.granted

    def _forgotten(self, txn: Txn, record: Record) -> bool:
        """A record of a deleted person is dropped, unless it brings consent back."""
        if not self._tombstones:
            return False  # nobody was ever deleted: no lookups on the hot path
        stones = [i for i in record.identities if txn.get(Keys.tombstone(i)) is not None]
        if not stones:
            return False
        if not self._grants_consent(record):
            return True
        for identity in stones:
            txn.delete(Keys.tombstone(identity))
        return False

    def forget(self, key: int, identity: Identity, wall_ms: int) -> list[Output] | None:
        """GDPR delete of the whole cluster holding `identity`: identities, profile, event
        summaries, timers and refused-link records go; every membership exits with reason
        `delete`; each identity is tombstoned. None when the identity is unknown."""
        with self.lock:
            txn = Txn(self.store)
            out: list[Output] = []
            found = self._forget(txn, identity, wall_ms, out)
            self._commit(txn, key, out)
            return out if found else None

    def _forget_command(
        self, txn: Txn, key: int, command: Forget, wall_ms: int, out: list[Output]
    ) -> None:
        origin = command.origin
        if self._first_time(txn, key, origin.source, origin.partition, origin.offset):
            self._forget(txn, command.identity, wall_ms, out)

    def _forget(self, txn: Txn, identity: Identity, wall_ms: int, out: list[Output]) -> bool:
        found = self._forget_graph(txn, identity, wall_ms)
        if found is None:
            return False
        canonical, cluster = found
        self._forget_profile(
            txn, canonical, cluster, at_ms=self._delete_time(wall_ms), wall_ms=wall_ms, out=out
        )
        return True

    def _delete_time(self, wall_ms: int) -> int:
        return self.max_event_ms if self.max_event_ms is not None else wall_ms

    def _forget_graph(
        self, txn: Txn, identity: Identity, wall_ms: int
    ) -> tuple[Identity, Cluster] | None:
        """The identities, the cluster and its refused-link records go; every member is
        tombstoned. Returns the deleted cluster, None when the identity is unknown."""
        graph = _Graph(txn, self.keys)
        canonical = graph.canonical(identity)
        self._tombstones = True
        if canonical is None:
            txn.put_json(Keys.tombstone(identity), {"deleted_at_ms": wall_ms})
            return None
        cluster = graph.cluster(canonical) or Cluster(members=(canonical,))
        txn.delete(self.keys.cluster(canonical))
        for member in cluster.members:
            txn.delete(self.keys.pointer(member))
            # A refused link is filed under both identities: remove both copies.
            for _, raw in self.store.scan(Keys.conflicts_of(member)):
                entry = decode(raw)
                for side in (entry["a"], entry["b"]):
                    txn.delete(Keys.conflict((side[0], side[1]), entry["position"]))
            txn.put_json(Keys.tombstone(member), {"deleted_at_ms": wall_ms})
        self.stats.deleted += 1
        return canonical, cluster

    def _forget_profile(
        self,
        txn: Txn,
        canonical: Identity,
        cluster: Cluster,
        *,
        at_ms: int,
        wall_ms: int,
        out: list[Output],
    ) -> None:
        """The profile, its event summaries and timer go, every membership exits (reason
        `delete`), and earlier outputs naming the person still waiting in an outbox too."""
        stored = txn.get_json(self.keys.profile(canonical))
        if stored is not None:
            self._remove_profile(
                txn,
                canonical,
                cluster,
                stored,
                reason="delete",
                at_ms=at_ms,
                wall_ms=wall_ms,
                out=out,
            )
        members = {f"{ns}:{v}" for ns, v in cluster.members}
        for key, raw in self.store.scan(b"q/"):
            if key.endswith(b"/seq"):
                continue
            stored_output = decode(raw)
            if isinstance(stored_output, dict):
                continue  # a command between the steps, not an output to a destination
            held = AudienceChange.from_stored(stored_output).identities
            if any(f"{ns}:{v}" in members for ns, values in held.items() for v in values):
                txn.delete(key)

    # -- several processes: the identity step -------------------------------------------------

    def route(self, records: Sequence[Record | Forget], wall_ms: int) -> list[Output]:
        """The graph step: apply each record to the identity graph and say where it goes.

        Every record passes through this one key, in read order per partition, so the graph
        is applied exactly as one worker would. Outputs: `Routed` (the record and its cluster,
        for the profile step of the cluster's shard), `Move` (a cluster merged away: for the
        loser's shard) and `Drop` (a GDPR delete)."""
        with self.lock:
            txn = Txn(self.store)
            out: list[Output] = []
            self._follow_wall(txn, wall_ms, out)
            for record in records:
                self.counts.raw_out += 1
                if isinstance(record, Forget):
                    self._route_forget(txn, record, wall_ms, out)
                else:
                    self._process_one(txn, GRAPH_KEY, record, wall_ms, out)
            self.counts.graph_out += len(out)
            self._commit(txn, GRAPH_KEY, out)
            return out

    def finish_route(self, wall_ms: int) -> list[Output]:
        """End of a replay: every shard's event time reaches the last event (timers fire)."""
        with self.lock:
            last = self._to_last_event()
            if last is None:
                return []
            txn = Txn(self.store)
            out: list[Output] = []
            for shard in range(self.settings.shards):
                out.append(Tick(self._next_seq(GRAPH_KEY, out), shard, last))
            self.counts.graph_out += len(out)
            self._commit(txn, GRAPH_KEY, out)
            return out

    def _next_seq(self, key: int, out: Sequence[Output]) -> int:
        """The outbox sequence the next output of this call will get (see `_commit`)."""
        return self.outbox_seq(key) + len(out) + 1

    def _route_record(self, txn: Txn, record: Record, out: list[Output]) -> None:
        linked = self._link(txn, record)
        if linked is None:
            return
        resolution, losers = linked
        canonical = resolution.canonical
        # The members travel only when the cluster changed (the profile step keeps them).
        members = resolution.cluster.members if resolution.cluster is not None else ()
        at_ms = record.ts_ms if record.ts_ms is not None else self.now_ms
        for merge, _ in losers:
            # Every loser moves to the final survivor (an intermediate survivor lost too).
            out.append(
                Move(
                    self._next_seq(GRAPH_KEY, out),
                    merge.loser,
                    canonical,
                    members,
                    merge.merge_id,
                    at_ms,
                    self.max_event_ms,
                )
            )
        if record.kind == "event" and self._duplicate(txn, record):
            return
        out.append(
            Routed(self._next_seq(GRAPH_KEY, out), canonical, members, self.max_event_ms, record)
        )

    def _route_forget(self, txn: Txn, command: Forget, wall_ms: int, out: list[Output]) -> None:
        origin = command.origin
        if not self._first_time(txn, GRAPH_KEY, origin.source, origin.partition, origin.offset):
            return
        found = self._forget_graph(txn, command.identity, wall_ms)
        if found is not None:
            canonical, cluster = found
            at_ms = self._delete_time(wall_ms)
            out.append(Drop(self._next_seq(GRAPH_KEY, out), canonical, cluster.members, at_ms))

    # -- several processes: the profile step --------------------------------------------------

    def process_commands(self, key: int, items: Sequence[Command], wall_ms: int) -> list[Output]:
        """The profile step of one shard key: what the graph step routed here, and moved
        profiles read back from the feedback topic. Emits audience changes and `Adopt`
        commands (for the feedback topic)."""
        with self.lock:
            txn = Txn(self.store)
            out: list[Output] = []
            self._follow_wall(txn, wall_ms, out)
            for item in items:
                if isinstance(item, Adopt):
                    self._adopt(txn, key, item, wall_ms, out)
                else:
                    self._graph_command(txn, key, item, wall_ms, out)
            self._read_ns = 0
            self._commit(txn, key, out)
            return out

    def _graph_command(
        self, txn: Txn, key: int, item: GraphOutput, wall_ms: int, out: list[Output]
    ) -> None:
        self.counts.graph_done += 1
        # The graph step's outputs reach a key in their order: one sequence is the offset.
        if not self._first_time(txn, key, GRAPH_SOURCE, 0, item.seq):
            return
        if isinstance(item, Drop):
            cluster = Cluster(members=item.members)
            self._forget_profile(
                txn, item.canonical, cluster, at_ms=item.at_ms, wall_ms=wall_ms, out=out
            )
            return
        self._advance_to(txn, item.event_ms, wall_ms, out)
        if isinstance(item, Move):
            self._move(txn, item, wall_ms, out)
        elif isinstance(item, Routed):
            self._routed(txn, item, wall_ms, out)

    def _advance_to(self, txn: Txn, event_ms: int | None, wall_ms: int, out: list[Output]) -> None:
        """Event time as the graph step saw it: timers up to it fire (live: the wall clock
        moves event time, see `_follow_wall`)."""
        if self.live or event_ms is None:
            return
        if self.max_event_ms is not None and event_ms <= self.max_event_ms:
            return
        self.max_event_ms = event_ms
        self._fire_timers(txn, self.now_ms, wall_ms, out)

    def _routed(self, txn: Txn, item: Routed, wall_ms: int, out: list[Output]) -> None:
        record = item.record
        self._read_ns = record.read_ns
        self.stats.records += 1
        profile, fresh = self._profile(txn, item.canonical)
        if item.members:
            profile = self._with_members(profile, item.members)
        at_ms = record.ts_ms if record.ts_ms is not None else self.now_ms
        self._apply_to_profile(
            txn,
            record,
            item.canonical,
            cluster=None,
            profile=profile,
            fresh=fresh,
            merged=False,
            duplicate=False,
            at_ms=at_ms,
            wall_ms=wall_ms,
            out=out,
        )

    def _move(self, txn: Txn, move: Move, wall_ms: int, out: list[Output]) -> None:
        """The loser's side of a merge: exits, then the profile leaves through the feedback
        topic. A forwarding pointer stays, for moves into this profile still on their way."""
        self._read_ns = 0
        txn.put_json(Keys.forward(move.loser), identity_str(move.survivor))
        loser = txn.get_json(self.keys.profile(move.loser))
        if loser is None:
            return
        cluster = self._cluster_of(txn, move.loser, loser)
        self._exit_merged(
            txn, move.loser, cluster, loser, at_ms=move.at_ms, wall_ms=wall_ms, out=out
        )
        self.counts.fb_out += 1
        shipped = {**loser, "timer": None}
        out.append(Adopt(move.survivor, move.members, move.merge_id, shipped, move.at_ms))

    def _adopt(self, txn: Txn, key: int, adopt: Adopt, wall_ms: int, out: list[Output]) -> None:
        """The survivor's side: merge the moved profile in once, re-evaluate every segment."""
        origin = adopt.origin
        if origin is not None and not self._first_time(
            txn, key, origin.source, origin.partition, origin.offset
        ):
            return
        self._read_ns = 0
        merged_key = Keys.merged(adopt.merge_id, adopt.survivor)
        if txn.get(merged_key) is not None:
            return  # a copy already merged (or passed on) here
        txn.put(merged_key, b"")
        self.counts.fb_done += 1
        onward = txn.get_json(Keys.forward(adopt.survivor))
        if onward is not None:  # the survivor merged away meanwhile: follow it
            self.counts.fb_out += 1
            target = parse_identity(onward)
            out.append(Adopt(target, adopt.members, adopt.merge_id, adopt.profile, adopt.at_ms))
            return
        profile = prof.merge_profiles(
            self._profile(txn, adopt.survivor)[0],
            adopt.profile,
            self.index.aggregates,
            self.index.absents,
        )
        profile = self._with_members(profile, adopt.members)
        self._evaluate(
            txn,
            adopt.survivor,
            cluster=None,
            profile=profile,
            which=set(self.index.all_ids()),
            at_ms=adopt.at_ms,
            wall_ms=wall_ms,
            reason="merge",
            out=out,
        )

    def _profile(self, txn: Txn, canonical: Identity) -> tuple[prof.Profile, bool]:
        """The stored profile of a cluster, or a new one, and whether it is new."""
        stored = txn.get_json(self.keys.profile(canonical))
        return (prof.new_profile(), True) if stored is None else (stored, False)

    def _with_members(self, profile: prof.Profile, members: Sequence[Identity]) -> prof.Profile:
        """The profile step's copy of its cluster's members (they only grow)."""
        held = {(m[0], m[1]) for m in profile.get("ids", ())}
        if held.issuperset(members):
            return profile
        union = sorted(held.union(members), key=self.rules.sort_key)
        return {**profile, "ids": [list(m) for m in union]}

    def _cluster_of(self, txn: Txn, canonical: Identity, profile: prof.Profile) -> Cluster:
        """Who a profile is, for outputs: the profile step's copy of the members with several
        processes, else the graph."""
        ids = profile.get("ids")
        if ids:
            return Cluster(members=tuple((m[0], m[1]) for m in ids))
        return _Graph(txn, self.keys).members(canonical) or Cluster(members=(canonical,))

    # -- helpers ---------------------------------------------------------------------------

    def _write_graph(self, txn: Txn, resolution: Resolution) -> None:
        for identity, canonical in resolution.pointers.items():
            txn.put_json(self.keys.pointer(identity), identity_str(canonical))
        for canonical, cluster in resolution.clusters.items():
            if cluster is None:
                txn.delete(self.keys.cluster(canonical))
            else:
                txn.put_json(self.keys.cluster(canonical), cluster.to_json())
        for conflict in resolution.conflicts:
            self.stats.conflicts += 1
            metrics.REFUSED.labels(conflict.rule).inc()
            entry = conflict.to_json()
            txn.put_json(Keys.conflict(conflict.a, conflict.position), entry)
            txn.put_json(Keys.conflict(conflict.b, conflict.position), entry)

    def _emit(
        self,
        out: list[Output],
        canonical: Identity,
        *,
        cluster: Cluster,
        profile: prof.Profile,
        changes: Sequence[Transition],
        at_ms: int,
        wall_ms: int,
        reason: str,
    ) -> None:
        pid = profile_id(canonical)
        identities = cluster.by_namespace()
        denied = self._consent_denied(profile)
        counts = self._published.changes
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
                    read_ns=self._read_ns,
                    consent_denied=denied,
                )
            )


def profile_document(
    canonical: Identity, cluster: Cluster, profile: dict[str, Any] | None
) -> dict[str, Any]:
    """The profile JSON of DESIGN §6."""
    p = profile or prof.new_profile()
    events = p["events"]
    return {
        "profile_id": profile_id(canonical),
        "identities": cluster.by_namespace(),
        "attributes": prof.nested_attributes(p),
        "segments": {
            seg: {"status": "entered" if held[0] else "exited", "since": iso_ms(held[1])}
            for seg, held in sorted(p["segs"].items())
        },
        "events": {
            "count": events[0] if events else 0,
            "first": iso_ms(events[1]) if events else None,
            "last": iso_ms(events[2]) if events else None,
        },
    }
