"""Profiles: each cluster's merged attributes, event summaries, rule inputs and memberships
(the document of `operators.profile`), and which event ids were applied.

Keys:
| key | value | what |
| --- | --- | --- |
| `p/SSSS/ID` | profile JSON | the profile of the cluster whose canonical is ID |
| `x/EVENT_ID` | empty | an event id already applied (dedup by `_id`) |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from operators import profile as prof
from operators.identity import Cluster, IdentityRules
from operators.steps.graph import GraphView
from operators.steps.stats import EngineStats
from operators.store import Txn, identity_key
from schemas.records import Identity, Record

PREFIX = b"p/"


def profile_key(canonical: Identity, shards: int) -> bytes:
    return identity_key("p", canonical, shards)


def seen_key(event_id: str) -> bytes:
    return f"x/{event_id}".encode()


@dataclass(frozen=True, slots=True)
class Gone:
    """A profile deleted in this call: merged into `merged_into`, else forgotten; who it was."""

    merged_into: Identity | None
    identities: dict[str, list[str]]


class Profiles:
    def __init__(self, rules: IdentityRules, shards: int, stats: EngineStats) -> None:
        self.rules = rules
        self.shards = shards
        self.stats = stats
        # The profiles written (None) or deleted (Gone) since the last `take_touched`; None
        # when nothing reads them (no profile projection): no cost then.
        self.touched: dict[Identity, Gone | None] | None = None

    def take_touched(self) -> dict[Identity, Gone | None]:
        touched = self.touched or {}
        if self.touched is not None:
            self.touched = {}
        return touched

    def get(self, txn: Txn, canonical: Identity) -> prof.Profile | None:
        stored: prof.Profile | None = txn.get_json(profile_key(canonical, self.shards))
        return stored

    def load(self, txn: Txn, canonical: Identity) -> tuple[prof.Profile, bool]:
        """The stored profile of a cluster, or a new one, and whether it is new."""
        stored = self.get(txn, canonical)
        return (prof.new_profile(), True) if stored is None else (stored, False)

    def put(self, txn: Txn, canonical: Identity, profile: prof.Profile) -> None:
        txn.put_json(profile_key(canonical, self.shards), profile)
        if self.touched is not None:
            self.touched[canonical] = None

    def delete(self, txn: Txn, canonical: Identity, gone: Gone | None = None) -> None:
        txn.delete(profile_key(canonical, self.shards))
        if self.touched is not None and gone is not None:
            self.touched[canonical] = gone

    def duplicate(self, txn: Txn, record: Record) -> bool:
        """An event whose `_id` was applied before (marks it applied otherwise)."""
        key = seen_key(record.event_id or "")
        if txn.get(key) is not None:
            self.stats.duplicates += 1
            return True
        txn.put(key, b"")
        return False

    def with_members(self, profile: prof.Profile, members: Sequence[Identity]) -> prof.Profile:
        """The profile step's copy of its cluster's members, with several processes (they
        only grow)."""
        held = {(m[0], m[1]) for m in profile.get("ids", ())}
        if held.issuperset(members):
            return profile
        union = sorted(held.union(members), key=self.rules.sort_key)
        return {**profile, "ids": [list(m) for m in union]}

    def cluster_of(self, txn: Txn, canonical: Identity, profile: prof.Profile) -> Cluster:
        """Who a profile is, for outputs: the profile step's copy of the members with several
        processes, else the graph."""
        ids = profile.get("ids")
        if ids:
            return Cluster(members=tuple((m[0], m[1]) for m in ids))
        members = GraphView(txn, self.shards).members(canonical)
        return members or Cluster(members=(canonical,))
