"""The identity graph: which cluster every identity belongs to, each cluster's members and
links, and the links a rule refused. The linking itself is the pure `operators.identity.resolve`;
this step reads and writes what it decides.

Keys (`SSSS`: the identity's shard; `ID`: `Namespace:value`):
| key | value | what |
| --- | --- | --- |
| `i/SSSS/ID` | `ID` | identity -> canonical identity of its cluster |
| `c/SSSS/ID` | cluster JSON | members and links of the cluster whose canonical is ID |
| `k/ID/POSITION` | conflict JSON | a refused link, filed once under each of its two identities |
"""

from __future__ import annotations

from operators import metrics
from operators.identity import Cluster, IdentityRules, Merge, Resolution, resolve
from operators.steps.stats import EngineStats
from operators.store import Txn, decode, identity_key
from schemas.records import Identity, Record, identity_str, parse_identity


def pointer_key(identity: Identity, shards: int) -> bytes:
    return identity_key("i", identity, shards)


def cluster_key(canonical: Identity, shards: int) -> bytes:
    return identity_key("c", canonical, shards)


def conflict_key(identity: Identity, position: str) -> bytes:
    return f"k/{identity_str(identity)}/{position}".encode()


def conflicts_prefix(identity: Identity) -> bytes:
    return f"k/{identity_str(identity)}/".encode()


class GraphView:
    """The identity graph as `resolve` reads it, through the transaction."""

    def __init__(self, txn: Txn, shards: int) -> None:
        self.txn = txn
        self.shards = shards

    def canonical(self, identity: Identity) -> Identity | None:
        raw = self.txn.get_json(pointer_key(identity, self.shards))
        return None if raw is None else parse_identity(raw)

    def cluster(self, canonical: Identity) -> Cluster | None:
        raw = self.txn.get_json(cluster_key(canonical, self.shards))
        return None if raw is None else Cluster.from_json(raw)

    def members(self, canonical: Identity) -> Cluster | None:
        """The cluster with its members only (what outputs name), not its links."""
        raw = self.txn.get_json(cluster_key(canonical, self.shards))
        return None if raw is None else Cluster(tuple((m[0], m[1]) for m in raw["members"]))


class Graph:
    def __init__(self, rules: IdentityRules, shards: int, stats: EngineStats):
        self.rules = rules
        self.shards = shards
        self.stats = stats

    def link(self, txn: Txn, record: Record) -> tuple[Resolution, list[tuple[Merge, Cluster]]]:
        """Apply a record's identities to the graph. Returns the resolution and the merges whose
        loser was a cluster before, with that cluster (a new identity joining has no profile
        to merge)."""
        graph = GraphView(txn, self.shards)
        position = record.origin.position
        resolution = resolve(graph, self.rules, record.identities, position, record.ts_ms)
        losers = [(m, graph.cluster(m.loser)) for m in resolution.merges]
        self._write(txn, resolution)
        if resolution.merges:
            self.stats.merges += len(resolution.merges)
            if resolution.cluster is not None:
                metrics.CLUSTER_SIZE.observe(len(resolution.cluster.members))
        return resolution, [(m, c) for m, c in losers if c is not None]

    def _write(self, txn: Txn, resolution: Resolution) -> None:
        shards = self.shards
        for identity, canonical in resolution.pointers.items():
            txn.put_json(pointer_key(identity, shards), identity_str(canonical))
        for canonical, cluster in resolution.clusters.items():
            if cluster is None:
                txn.delete(cluster_key(canonical, shards))
            else:
                txn.put_json(cluster_key(canonical, shards), cluster.to_json())
        for conflict in resolution.conflicts:
            self.stats.conflicts += 1
            metrics.REFUSED.labels(conflict.rule).inc()
            entry = conflict.to_json()
            txn.put_json(conflict_key(conflict.a, conflict.position), entry)
            txn.put_json(conflict_key(conflict.b, conflict.position), entry)

    def canonical(self, txn: Txn, identity: Identity) -> Identity | None:
        return GraphView(txn, self.shards).canonical(identity)

    def members(self, txn: Txn, canonical: Identity) -> Cluster | None:
        return GraphView(txn, self.shards).members(canonical)

    def remove(self, txn: Txn, identity: Identity) -> tuple[Identity, Cluster] | None:
        """The cluster holding `identity` leaves the graph: its pointers, the cluster and its
        refused-link records (both copies). Returns it; None when the identity is unknown."""
        graph = GraphView(txn, self.shards)
        canonical = graph.canonical(identity)
        if canonical is None:
            return None
        cluster = graph.cluster(canonical) or Cluster(members=(canonical,))
        txn.delete(cluster_key(canonical, self.shards))
        for member in cluster.members:
            txn.delete(pointer_key(member, self.shards))
            # Through the transaction: a link refused earlier in this call goes too.
            for _, raw in txn.scan(conflicts_prefix(member)):
                entry = decode(raw)
                for side in (entry["a"], entry["b"]):
                    txn.delete(conflict_key((side[0], side[1]), entry["position"]))
        return canonical, cluster
