"""Privacy: consent, and GDPR deletes. A forgotten person's identities are tombstoned, so
their records are dropped (a replay cannot bring them back) until one grants consent again.

Keys:
| key | value | what |
| --- | --- | --- |
| `d/ID` | tombstone JSON | a forgotten identity |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config.settings import PrivacySettings
from operators import profile as prof
from operators.identity import Cluster
from operators.steps.call import Call
from operators.steps.graph import Graph
from operators.steps.history import History
from operators.steps.outbox import Outbox
from operators.steps.profiles import Profiles
from operators.steps.stats import EngineStats
from operators.store import Store, Txn
from schemas.records import Identity, Record, identity_str

if TYPE_CHECKING:  # membership reads consent from here; this step asks it to exit people
    from operators.steps.membership import Membership

PREFIX = b"d/"


def tombstone_key(identity: Identity) -> bytes:
    return f"d/{identity_str(identity)}".encode()


class Consent:
    """A profile whose consent attribute is denied is kept out of destinations that require
    consent; a record that grants it lifts a tombstone."""

    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings

    def denied(self, profile: prof.Profile) -> bool:
        values = prof.attribute_values(profile, self.settings.consent_attribute)
        return any(str(v).lower() in self.settings.denied for v in values)

    def granted_by(self, record: Record) -> bool:
        node: Any = record.body
        for part in self.settings.consent_attribute.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node is not None and str(node).lower() in self.settings.granted


class Privacy:
    def __init__(
        self,
        *,
        store: Store,
        consent: Consent,
        graph: Graph,
        profiles: Profiles,
        history: History,
        outbox: Outbox,
        stats: EngineStats,
    ) -> None:
        self.consent = consent
        self.graph = graph
        self.profiles = profiles
        self.history = history
        self.outbox = outbox
        self.stats = stats
        self.membership: Membership | None = None  # set by the engine once it exists
        self._any = next(iter(store.scan(PREFIX)), None) is not None

    def forgotten(self, txn: Txn, record: Record) -> bool:
        """A record of a deleted person is dropped, unless it brings consent back."""
        if not self._any:
            return False  # nobody was ever deleted: no lookups on the hot path
        stones = [i for i in record.identities if txn.get(tombstone_key(i)) is not None]
        if not stones:
            return False
        if not self.consent.granted_by(record):
            self.stats.forgotten += 1
            return True
        for identity in stones:
            txn.delete(tombstone_key(identity))
        return False

    def forget(self, call: Call, identity: Identity, at_ms: int) -> bool:
        """GDPR delete of the whole cluster holding `identity`: identities, profile, event
        summaries, timers and refused-link records go; every membership exits with reason
        `delete`; each identity is tombstoned. False when the identity is unknown."""
        found = self.forget_graph(call.txn, identity, call.wall_ms)
        if found is None:
            return False
        canonical, cluster = found
        self.forget_profile(call, canonical, cluster, at_ms)
        return True

    def forget_graph(
        self, txn: Txn, identity: Identity, wall_ms: int
    ) -> tuple[Identity, Cluster] | None:
        """The person leaves the graph and every member is tombstoned. Returns the deleted
        cluster, None when the identity is unknown (it is tombstoned all the same)."""
        self._any = True
        found = self.graph.remove(txn, identity)
        if found is None:
            txn.put_json(tombstone_key(identity), {"deleted_at_ms": wall_ms})
            return None
        for member in found[1].members:
            txn.put_json(tombstone_key(member), {"deleted_at_ms": wall_ms})
        self.stats.deleted += 1
        return found

    def forget_profile(self, call: Call, canonical: Identity, cluster: Cluster, at_ms: int) -> None:
        """The profile, its event summaries, kept events and timer go, every membership exits
        (reason `delete`), and earlier outputs naming the person still waiting in an outbox
        too."""
        stored = self.profiles.get(call.txn, canonical)
        if stored is not None:
            assert self.membership is not None
            self.membership.remove(call, canonical, cluster, stored, reason="delete", at_ms=at_ms)
        self.history.drop(call.txn, canonical)
        self.outbox.drop_person(call.txn, cluster.members)
