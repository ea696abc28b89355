"""Rollout: audiences added, edited or removed on a state built for other definitions
(DESIGN §13).

The state records the definitions it is built for (each segment's id and `definition_hash`,
and the rule inputs they read) under a version; each profile carries the version it was last
brought to (`v`; none: the state's base version). A profile whose version is not the
configured one is *stale*. Bringing it up to date (`upgrade`), in one transaction:
- inputs no earlier definition read are rebuilt from its history (`operators.steps.history`);
- a removed segment's member exits with reason `removed`, and the segment leaves the profile
  (its transition count stays in `gone`, so a segment added again numbers on);
- an added or changed segment (and those built on it) is evaluated at event time `now`;
  what flips is emitted with reason `definition`; windowed ones get their timers.
A stale profile that a record, a timer or a merge touches is upgraded first; the pass over the
store (`step`) upgrades the rest in batches of `profile.rollout_batch`, one WriteBatch each,
with its cursor saved in the same batch: killed anywhere, it goes on where the last batch
ended and, as changes are numbered per profile, emits the same changes (same ids).

Keys:
| key | value | what |
| --- | --- | --- |
| `meta/defs/current` | version | the definitions configured at the last start |
| `meta/defs/base` | version | the version of a profile with no `v` |
| `meta/defs/v/VERSION` | JSON | `{"segments": {ID: HASH}, "inputs": [KEY]}` |
| `meta/rollout/SSSS`, `meta/rollout/all` | JSON | the pass over a shard's (all) profiles |
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from operators import profile as prof
from operators.rules import Absent, Aggregate, definition_hash
from operators.segments import SegmentIndex, exit_all
from operators.steps.call import Call
from operators.steps.history import History, reads_before
from operators.steps.membership import Membership
from operators.steps.positions import Positions
from operators.steps.profiles import PREFIX as PROFILES
from operators.steps.stats import EngineStats
from operators.store import Store, Txn, identity_from_key
from schemas.records import Identity

CURRENT_KEY = b"meta/defs/current"
BASE_KEY = b"meta/defs/base"
VERSIONS = b"meta/defs/v/"
CURSORS = b"meta/rollout/"


@dataclass(frozen=True)
class Definitions:
    segments: dict[str, str]  # id -> definition_hash
    inputs: frozenset[str]  # the aggregate and absent keys the segments read

    @property
    def version(self) -> str:
        text = orjson.dumps(
            {"s": self.segments, "i": sorted(self.inputs)}, option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(text).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"segments": self.segments, "inputs": sorted(self.inputs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Definitions:
        return cls(dict(data["segments"]), frozenset(data["inputs"]))

    @classmethod
    def of(cls, index: SegmentIndex) -> Definitions:
        return cls(
            {r.segment_id: definition_hash(r) for r in index.rules},
            frozenset(index.aggregates) | frozenset(index.absents),
        )


def cursor_key(shard: int | None) -> bytes:
    return CURSORS + (b"all" if shard is None else f"{shard:04d}".encode())


@dataclass
class Progress:
    """The pass over one shard's profiles (or all of them), saved with each batch."""

    version: str
    after: str | None = None  # the last profile key done
    done: bool = False
    profiles: int = 0  # profiles looked at
    upgraded: int = 0  # stale profiles brought up to date by the pass
    # Segments evaluated on less history than their window: id -> the latest "history from".
    partial: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, txn: Txn | _Reader, shard: int | None, version: str) -> Progress:
        held = txn.get_json(cursor_key(shard))
        if held is None or held.get("version") != version:
            return cls(version)
        return cls(**held)

    def save(self, txn: Txn, shard: int | None) -> None:
        txn.put_json(cursor_key(shard), self.__dict__.copy())


class Rollout:
    def __init__(
        self,
        *,
        store: Store,
        index: SegmentIndex,
        history: History,
        membership: Membership,
        positions: Positions,
        stats: EngineStats,
        batch: int,
        held: bool = True,
    ) -> None:
        """`held`: this engine holds profiles (the identity step of several processes holds
        none, and records nothing)."""
        self.store = store
        self.index = index
        self.history = history
        self.membership = membership
        self.positions = positions
        self.stats = stats
        self.batch = batch
        self.defs = Definitions.of(index)
        self.version = self.defs.version
        self._known: dict[str, Definitions] = {self.version: self.defs}
        self.base = self.version
        self.needed = False
        # What changed since the last start: (added, changed, removed) segment ids, for the log.
        self.edit: tuple[list[str], list[str], list[str]] | None = None
        # This process's passes: profiles checked and brought up to date, passes open.
        self.checked = 0
        self.brought = 0
        self.open: set[int | None] = set()
        self._finished: set[int | None] = set()  # passes done at this version
        if held:
            self._record(store)

    def _record(self, store: Store) -> None:
        """The configured definitions recorded in the state, and whether profiles may be stale."""
        base = store.get(BASE_KEY)
        if base is None:
            # A new state, or one built before definitions were recorded: its profiles are
            # taken as built for the definitions configured now.
            self.base = self.version
            store.write(
                {
                    BASE_KEY: self.version.encode(),
                    CURRENT_KEY: self.version.encode(),
                    VERSIONS + self.version.encode(): orjson.dumps(self.defs.to_json()),
                }
            )
        else:
            self.base = base.decode()
            current = store.get(CURRENT_KEY)
            if current != self.version.encode():
                if current is not None:
                    self.edit = _edit(self._definitions_in(store, current.decode()), self.defs)
                store.write(
                    {
                        CURRENT_KEY: self.version.encode(),
                        VERSIONS + self.version.encode(): orjson.dumps(self.defs.to_json()),
                    }
                )
        # Nothing can be stale while the state has only ever known one version.
        self.needed = any(k != VERSIONS + self.version.encode() for k, _ in store.scan(VERSIONS))

    # -- one profile --------------------------------------------------------------------------

    def stamp(self, profile: prof.Profile) -> prof.Profile:
        """A new profile is built for the configured definitions."""
        if self.version == self.base:
            return profile
        return {**profile, "v": self.version}

    def stale(self, profile: prof.Profile) -> bool:
        stamp: str = profile.get("v", self.base)
        return stamp != self.version

    def current(
        self, call: Call, canonical: Identity, profile: prof.Profile, *, fresh: bool, at_ms: int
    ) -> prof.Profile:
        """A profile just loaded, at the configured definitions: a new one stamped, a stale
        one upgraded at `at_ms`."""
        if fresh:
            return self.stamp(profile)
        return self.upgrade(call, canonical, profile, at_ms)

    def upgrade(
        self, call: Call, canonical: Identity, profile: prof.Profile, at_ms: int
    ) -> prof.Profile:
        """The profile brought to the configured definitions at event time `at_ms` (stored,
        with its changes emitted). Returns it as stored."""
        if not self.stale(profile):
            return profile
        txn = call.txn
        old = self._definitions(txn, profile.get("v", self.base))
        new = self.defs
        changed = {s for s, h in new.segments.items() if old.segments.get(s) != h}
        profile = {**profile, "v": self.version}
        if self.version == self.base:
            del profile["v"]
        rebuild = new.inputs - old.inputs
        if rebuild and profile["events"]:
            profile = self._rebuilt(txn, canonical, profile, rebuild, at_ms)
        profile = self._removed(call, canonical, profile, at_ms)
        profile = _renumbered(profile, changed, at_ms)
        self.stats.upgraded += 1
        return self.membership.evaluate(
            call,
            canonical,
            cluster=None,
            profile=profile,
            which=changed,
            at_ms=at_ms,
            reason="definition",
            now_ms=at_ms,
            retime=True,
        )

    def merged_in(
        self, txn: Txn, canonical: Identity, profile: prof.Profile, moved: prof.Profile, at_ms: int
    ) -> prof.Profile:
        """`profile` (current) after a profile built for older definitions merged into it
        (moved between processes across a restart with edited audiences): the inputs the
        moved one lacked are rebuilt from the merged history."""
        if not self.stale(moved) or not profile["events"]:
            return profile
        keys = self.defs.inputs - self._definitions(txn, moved.get("v", self.base)).inputs
        return self._rebuilt(txn, canonical, profile, keys, at_ms) if keys else profile

    def _rebuilt(
        self, txn: Txn, canonical: Identity, profile: prof.Profile, keys: frozenset[str], at_ms: int
    ) -> prof.Profile:
        index = self.index
        aggs = [index.aggregates[k] for k in sorted(keys) if k in index.aggregates]
        absents = [index.absents[k] for k in sorted(keys) if k in index.absents]
        view = self.history.view(txn, canonical, profile, at_ms)
        profile = prof.rebuild_inputs(profile, view.events, aggs, absents)
        partial = dict(profile.get("hfrom") or {})
        for key in keys:
            partial.pop(key, None)
        if view.from_ms is not None:
            rebuilt: list[Aggregate | Absent] = [*aggs, *absents]
            for input_ in rebuilt:
                if reads_before(input_, at_ms, view.from_ms):
                    partial[input_.key] = view.from_ms
        if partial:
            profile["hfrom"] = partial
        else:
            profile.pop("hfrom", None)
        return profile

    def _removed(
        self, call: Call, canonical: Identity, profile: prof.Profile, at_ms: int
    ) -> prof.Profile:
        """Members of removed segments exit (reason `removed`); the segments leave the profile."""
        segs = profile["segs"]
        gone_ids = sorted(s for s in segs if s not in self.defs.segments)
        if not gone_ids:
            return profile
        held = {s: segs[s] for s in gone_ids}
        after, exits = exit_all(held, at_ms)
        if exits:
            cluster = self.membership.profiles.cluster_of(call.txn, canonical, profile)
            self.membership.emit(
                call, canonical, cluster, profile, exits, at_ms=at_ms, reason="removed"
            )
        gone = dict(profile.get("gone") or {})
        for s in gone_ids:
            gone[s] = after[s][2]
        return {
            **profile,
            "segs": {s: v for s, v in segs.items() if s not in held},
            "gone": gone,
        }

    def _definitions_in(self, store: Store, version: str) -> Definitions:
        held = store.get(VERSIONS + version.encode())
        return (
            Definitions({}, frozenset())
            if held is None
            else Definitions.from_json(orjson.loads(held))
        )

    def _definitions(self, txn: Txn, version: str) -> Definitions:
        known = self._known.get(version)
        if known is None:
            held = txn.get_json(VERSIONS + version.encode())
            # Unknown (should not happen): every segment is taken as new.
            known = Definitions({}, frozenset()) if held is None else Definitions.from_json(held)
            self._known[version] = known
        return known

    # -- the pass over the store --------------------------------------------------------------

    def pending(self, shard: int | None) -> bool:
        """Asked after every batch of every key: a pass known done is not read again."""
        if not self.needed or shard in self._finished:
            return False
        if Progress.load(_Reader(self.store), shard, self.version).done:
            self._finished.add(shard)
            return False
        return True

    def step(self, call: Call, shard: int | None) -> bool:
        """One batch of the pass over a shard's (None: every) profile; True while more remain."""
        if not self.needed:
            return False
        txn = call.txn
        progress = Progress.load(txn, shard, self.version)
        if progress.done:
            return False
        prefix = PROFILES if shard is None else PROFILES + f"{shard:04d}/".encode()
        start = prefix if progress.after is None else progress.after.encode() + b"\x00"
        now = self.positions.now_ms
        seen = 0
        finished = True
        for key, _ in self.store.scan(prefix, start=start):
            if seen == self.batch:
                finished = False
                break
            seen += 1
            progress.after = key.decode()
            profile = txn.get_json(key)
            if profile is None or not self.stale(profile):
                continue
            canonical = identity_from_key(key)
            profile = self.upgrade(call, canonical, profile, now)
            progress.upgraded += 1
            self.brought += 1
            for input_key, from_ms in (profile.get("hfrom") or {}).items():
                for seg in self.index.readers.get(input_key, ()):
                    progress.partial[seg] = max(progress.partial.get(seg, from_ms), from_ms)
        progress.profiles += seen
        progress.done = finished
        progress.save(txn, shard)
        self.checked += seen
        if finished:
            self.open.discard(shard)
            self._finished.add(shard)
        else:
            self.open.add(shard)
        return not finished


class _Reader:
    """A store read as a transaction with no writes (for `Progress.load` outside a call)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get_json(self, key: bytes) -> Any:
        held = self.store.get(key)
        return None if held is None else orjson.loads(held)


def _edit(old: Definitions, new: Definitions) -> tuple[list[str], list[str], list[str]]:
    added = sorted(s for s in new.segments if s not in old.segments)
    changed = sorted(
        s for s, h in new.segments.items() if s in old.segments and old.segments[s] != h
    )
    removed = sorted(s for s in old.segments if s not in new.segments)
    return added, changed, removed


def _renumbered(profile: prof.Profile, changed: set[str], at_ms: int) -> prof.Profile:
    """A segment added again numbers its transitions on from where it left (change ids stay
    unique per profile and segment)."""
    gone = profile.get("gone")
    if not gone:
        return profile
    back = [s for s in changed if s in gone and s not in profile["segs"]]
    if not back:
        return profile
    segs = dict(profile["segs"])
    rest = dict(gone)
    for s in back:
        segs[s] = [False, at_ms, rest.pop(s)]
    out = {**profile, "segs": segs}
    if rest:
        out["gone"] = rest
    else:
        del out["gone"]
    return out


def summary(store: Store) -> dict[str, Any]:
    """What the passes did, over every cursor of a store: for `cdp segments sizes`."""
    partial: dict[str, int] = {}
    pending = False
    current = store.get(CURRENT_KEY)
    for _, raw in store.scan(CURSORS):
        held = orjson.loads(raw)
        if current is not None and held.get("version") != current.decode():
            continue
        pending = pending or not held.get("done")
        for seg, from_ms in held.get("partial", {}).items():
            partial[seg] = max(partial.get(seg, from_ms), from_ms)
    return {"partial": partial, "pending": pending}
