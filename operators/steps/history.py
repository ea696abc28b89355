"""History: each profile's raw events (the decoded body, as rules see it), so the inputs of an
audience added or edited later can be rebuilt (DESIGN §13). The per-rule aggregates in the
profile are the fast path; this is what they are rebuilt from.

What a rebuild reads is the *view*: the newest `max_events` events with a time inside
`max_age` of event time (`now - max_age`, `now`]. Trimming only drops events outside every
future view (older than the age, or beyond the newest `max_events`), in amortised steps, so
when trimming happens never changes a rebuild.

Keys:
| key | value | what |
| --- | --- | --- |
| `h/SSSS/LLLL/ID/TTTTTTTTTTTTT/EVENT_ID` | body JSON | an event of canonical ID's profile |
| `meta/history` | JSON | `{"on": bool, "since": ms or null}`: from when events are kept |

(LLLL: the length of ID in hex, so that no ID's prefix is another's; `since` null: from the
start.)

The profile document holds `hist: [count, oldest_ms]` of what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from config.settings import HistorySettings
from operators import profile as prof
from operators.rules import Absent, Aggregate
from operators.store import Store, Txn, shard_of
from schemas.records import Identity, Record

PREFIX = b"h/"
META_KEY = b"meta/history"
Event = tuple[int, dict[str, Any]]  # (event time, body)


@lru_cache(maxsize=1 << 16)
def history_prefix(canonical: Identity, shards: int) -> bytes:
    """Memoised: built for every event kept (as `operators.store.identity_key` is)."""
    text = f"{canonical[0]}:{canonical[1]}"
    return f"h/{shard_of(canonical, shards):04d}/{len(text):04x}/{text}/".encode()


def reads_before(input_: Aggregate | Absent, now_ms: int, since_ms: int) -> bool:
    """Whether a rule input reads, at `now_ms`, events older than `since_ms` (an `absent()`
    input can: its latest `after` event may be of any age)."""
    within = input_.within_ms if isinstance(input_, Aggregate) else None
    return within is None or now_ms - within < since_ms


def partial_since(
    rebuilt_from: Mapping[str, int], inputs: Iterable[Aggregate | Absent], now_ms: int
) -> int | None:
    """The latest "history from" among `inputs` rebuilt on partial history (`rebuilt_from`:
    input key -> from when its events were kept) that still read further back at `now_ms`."""
    out: int | None = None
    for input_ in inputs:
        since = rebuilt_from.get(input_.key)
        if since is not None and reads_before(input_, now_ms, since):
            out = since if out is None else max(out, since)
    return out


def entry_key(prefix: bytes, ts_ms: int, event_id: str) -> bytes:
    return prefix + f"{max(ts_ms, 0):013d}/{event_id}".encode()


def entry_time(prefix: bytes, key: bytes) -> int:
    return int(key[len(prefix) : len(prefix) + 13])


@dataclass(frozen=True, slots=True)
class View:
    """The events a rebuild reads, oldest first, and from when they are known to be complete:
    `from_ms` None when every event the profile ever had is there, else the time before
    which events may be missing (trimmed by age or count, or older than `since`)."""

    events: list[Event]
    from_ms: int | None


class History:
    def __init__(self, settings: HistorySettings, shards: int, store: Store) -> None:
        self.on = settings.enabled
        self.max_events = settings.max_events
        self.max_age_ms = settings.max_age_ms
        self.shards = shards
        # Trimming is amortised: a profile may hold this much more than the view for a while.
        self._slack_events = max(1, self.max_events // 10)
        self._slack_ms = max(1, self.max_age_ms // 10)
        held = store.get(META_KEY)
        self.since: int | None = None if held is None else orjson.loads(held).get("since")

    def start(self, store: Store, now_ms: int | None, has_profiles: bool) -> None:
        """Record from when events are kept: from the start for a new state, else from
        `now_ms` (a state built before the history existed, or while it was off)."""
        held = store.get(META_KEY)
        state = None if held is None else orjson.loads(held)
        if state is not None and state.get("on") == self.on:
            return
        if self.on and (has_profiles or state is not None):
            self.since = now_ms if now_ms is not None else 0
        store.write({META_KEY: orjson.dumps({"on": self.on, "since": self.since})})

    def prefix(self, canonical: Identity) -> bytes:
        return history_prefix(canonical, self.shards)

    # -- the record path ----------------------------------------------------------------------

    def add(
        self, txn: Txn, canonical: Identity, profile: prof.Profile, record: Record, now_ms: int
    ) -> prof.Profile:
        """Keep an event (applied for the first time: dedup by `_id` happened before)."""
        if not self.on:
            return profile
        ts = record.ts_ms
        assert ts is not None, "events always have a time"
        event_id = record.event_id or record.origin.position
        txn.put(entry_key(self.prefix(canonical), ts, event_id), orjson.dumps(record.body))
        held = profile.get("hist")
        hist = [held[0] + 1, min(held[1], ts)] if held else [1, ts]
        return self._trimmed(txn, canonical, {**profile, "hist": hist}, now_ms)

    def _trimmed(
        self, txn: Txn, canonical: Identity, profile: prof.Profile, now_ms: int
    ) -> prof.Profile:
        count, oldest = profile["hist"]
        cutoff = now_ms - self.max_age_ms
        if count < self.max_events + self._slack_events and oldest > cutoff - self._slack_ms:
            return profile
        prefix = self.prefix(canonical)
        entries = [key for key, _ in txn.scan(prefix)]
        keep_from = max(0, len(entries) - self.max_events)
        kept: list[int] = []
        for i, key in enumerate(entries):
            ts = entry_time(prefix, key)
            if i < keep_from or ts <= cutoff:
                txn.delete(key)
            else:
                kept.append(ts)
        return {**profile, "hist": [len(kept), kept[0]] if kept else None}

    # -- merges, moves between processes, deletes --------------------------------------------

    def move(
        self,
        txn: Txn,
        loser: Identity,
        loser_profile: prof.Profile,
        survivor: Identity,
        profile: prof.Profile,
        *,
        now_ms: int,
    ) -> prof.Profile:
        """The loser's events join the survivor's (a merge in this process)."""
        if not self.on:
            return profile
        entries = list(self._entries(txn, loser))
        target = self.prefix(survivor)
        for key, ts, event_id, raw in entries:
            txn.delete(key)
            txn.put(entry_key(target, ts, event_id), raw)
        return self._joined(txn, survivor, profile, loser_profile.get("hist"), now_ms)

    def ship(self, txn: Txn, canonical: Identity) -> list[list[Any]]:
        """A profile's events, taken out to travel with it to another process."""
        out: list[list[Any]] = []
        for key, ts, event_id, raw in list(self._entries(txn, canonical)):
            txn.delete(key)
            out.append([ts, event_id, orjson.loads(raw)])
        return out

    def adopt(
        self,
        txn: Txn,
        survivor: Identity,
        profile: prof.Profile,
        shipped: list[list[Any]],
        *,
        hist: list[int] | None,
        now_ms: int,
    ) -> prof.Profile:
        """Events shipped with a profile that merged into `survivor` from another process."""
        if not self.on:
            return profile
        target = self.prefix(survivor)
        for ts, event_id, body in shipped:
            txn.put(entry_key(target, ts, event_id), orjson.dumps(body))
        return self._joined(txn, survivor, profile, hist, now_ms)

    def _joined(
        self,
        txn: Txn,
        survivor: Identity,
        profile: prof.Profile,
        other: list[int] | None,
        now_ms: int,
    ) -> prof.Profile:
        own = profile.get("hist")
        if not other:
            return profile
        hist = [own[0] + other[0], min(own[1], other[1])] if own else list(other)
        return self._trimmed(txn, survivor, {**profile, "hist": hist}, now_ms)

    def drop(self, txn: Txn, canonical: Identity) -> None:
        """A GDPR delete: every kept event of the profile goes."""
        for key, _ in list(txn.scan(self.prefix(canonical))):
            txn.delete(key)

    def _entries(self, txn: Txn, canonical: Identity) -> Iterator[tuple[bytes, int, str, bytes]]:
        prefix = self.prefix(canonical)
        for key, raw in txn.scan(prefix):
            rest = key[len(prefix) :].decode()
            yield key, int(rest[:13]), rest[14:], raw

    def latest(self, txn: Txn, canonical: Identity, upto_ms: int) -> dict[str, Any] | None:
        """The profile's latest kept event at or before `upto_ms` (of one millisecond, the
        last by event id), or None."""
        prefix = self.prefix(canonical)
        found: bytes | None = None
        for key, raw in txn.scan(prefix):
            if entry_time(prefix, key) > upto_ms:
                break  # keys are in time order
            found = raw
        event: dict[str, Any] | None = None if found is None else orjson.loads(found)
        return event

    # -- what a rebuild reads -----------------------------------------------------------------

    def view(
        self, reader: Txn | Store, canonical: Identity, profile: prof.Profile, now_ms: int
    ) -> View:
        """The events a rebuild of the profile reads at `now_ms`, oldest first."""
        cutoff = now_ms - self.max_age_ms
        prefix = self.prefix(canonical)
        events: list[Event] = []
        if self.on:
            for key, raw in reader.scan(prefix):
                ts = entry_time(prefix, key)
                if ts > cutoff:
                    events.append((ts, orjson.loads(raw)))
        # At max_events the count trim may already have deleted older events from the store.
        capped = 0 < self.max_events <= len(events)
        if capped:
            events = events[len(events) - self.max_events :]
        summary = profile.get("events")
        first_ever = summary[1] if summary else None
        lower = cutoff
        if self.since is not None:
            lower = max(lower, self.since)
        if capped:
            # An event of the same millisecond as the oldest kept one may have been trimmed.
            lower = max(lower, events[0][0])
        if not self.on:
            lower = now_ms
        # Every event the profile ever had is in the view: nothing is missing.
        everything = summary is not None and summary[0] == len(events) and self.since is None
        complete = first_ever is None or first_ever > lower or everything
        return View(events, None if complete else lower + 1)
