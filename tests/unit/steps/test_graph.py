"""operators.steps.graph alone: pointers, clusters and refused links in the store."""

from __future__ import annotations

from typing import Any

from operators.identity import Cluster, IdentityRules
from operators.steps.graph import Graph, cluster_key, conflicts_prefix, pointer_key
from operators.steps.stats import EngineStats
from operators.store import MemoryStore, Txn, decode
from schemas.records import Identity, Record
from tests.unit.steps.helpers import Feed, ev, settings

CONF = settings()
SHARDS = CONF.shards
A: Identity = ("Email", "a@x.com")
B: Identity = ("Email", "b@x.com")
D1: Identity = ("ECID", "d1")
D2: Identity = ("ECID", "d2")


def setup() -> tuple[MemoryStore, Graph, Feed]:
    store = MemoryStore()
    graph = Graph(IdentityRules.from_settings(CONF), SHARDS, EngineStats())
    return store, graph, Feed(CONF)


def link(store: MemoryStore, graph: Graph, record: Record) -> Any:
    txn = Txn(store)
    out = graph.link(txn, record)
    txn.commit()
    return out


def pointer(store: MemoryStore, identity: Identity) -> Any:
    raw = store.get(pointer_key(identity, SHARDS))
    return None if raw is None else decode(raw)


def members(store: MemoryStore, canonical: Identity) -> tuple[Identity, ...] | None:
    raw = store.get(cluster_key(canonical, SHARDS))
    return None if raw is None else Cluster.from_json(decode(raw)).members


def conflicts(store: MemoryStore, identity: Identity) -> list[dict[str, Any]]:
    return [decode(raw) for _, raw in store.scan(conflicts_prefix(identity))]


def test_a_record_with_two_identities_makes_one_cluster() -> None:
    store, graph, feed = setup()
    resolution, losers = link(store, graph, feed("web", ev("e1", "view", 1, "d1", "A@x.com")))
    assert resolution.canonical == A  # the best namespace leads
    assert losers == []  # d1 was no cluster before: no profile to move
    assert pointer(store, A) == "Email:a@x.com" and pointer(store, D1) == "Email:a@x.com"
    assert members(store, A) == (A, D1)
    assert members(store, D1) is None
    assert graph.canonical(Txn(store), D1) == A
    assert graph.members(Txn(store), A) == Cluster((A, D1))


def test_linking_two_clusters_reports_the_loser_with_its_cluster() -> None:
    store, graph, feed = setup()
    link(store, graph, feed("web", ev("e1", "view", 1, "d1")))
    link(store, graph, feed("web", ev("e2", "view", 2, "d2", "a@x.com")))
    assert graph.stats.merges == 1
    resolution, losers = link(store, graph, feed("web", ev("e3", "view", 3, "d1", "a@x.com")))
    assert resolution.canonical == A
    assert [(m.survivor, m.loser, c.members) for m, c in losers] == [(A, D1, (D1,))]
    assert graph.stats.merges == 2
    assert members(store, A) == (A, D1, D2)
    assert members(store, D1) is None  # the loser's cluster is gone
    assert {pointer(store, i) for i in (A, D1, D2)} == {"Email:a@x.com"}


def test_a_known_record_writes_nothing_new() -> None:
    store, graph, feed = setup()
    link(store, graph, feed("web", ev("e1", "view", 1, "d1", "a@x.com")))
    txn = Txn(store)
    resolution, losers = graph.link(txn, feed("web", ev("e2", "view", 2, "d1", "a@x.com")))
    assert resolution.canonical == A and losers == [] and not resolution.merges
    assert txn.changes() == {}


def test_a_unique_conflict_is_refused_and_filed_under_both_identities() -> None:
    store, graph, feed = setup()
    link(store, graph, feed("web", ev("e1", "view", 1, "d1", "a@x.com")))
    merges = graph.stats.merges
    rec = feed("web", ev("e2", "view", 2, "d1", "b@x.com"))
    resolution, losers = link(store, graph, rec)
    assert resolution.canonical == B and losers == []
    assert members(store, A) == (A, D1)  # both clusters stay apart
    assert members(store, B) == (B,)
    assert pointer(store, D1) == "Email:a@x.com"
    expected = {
        "a": ["Email", "b@x.com"],
        "b": ["ECID", "d1"],
        "rule": "unique:Email",
        "position": rec.origin.position,
        "ts_ms": 2,
    }
    assert conflicts(store, B) == [expected]
    assert conflicts(store, D1) == [expected]
    assert conflicts(store, A) == []
    assert graph.stats.conflicts == 1 and graph.stats.merges == merges


def test_remove_deletes_pointers_cluster_and_both_copies_of_conflicts() -> None:
    store, graph, feed = setup()
    link(store, graph, feed("web", ev("e1", "view", 1, "d1", "a@x.com")))
    link(store, graph, feed("web", ev("e2", "view", 2, "d1", "b@x.com")))  # refused
    link(store, graph, feed("web", ev("e3", "view", 3, "d2")))  # someone else
    txn = Txn(store)
    removed = graph.remove(txn, D1)
    txn.commit()
    assert removed is not None and removed[0] == A and removed[1].members == (A, D1)
    assert pointer(store, A) is None and pointer(store, D1) is None
    assert members(store, A) is None
    # The refused link named d1: both copies go, the one filed under b@x.com too.
    assert conflicts(store, D1) == [] and conflicts(store, B) == []
    assert pointer(store, B) == "Email:b@x.com" and members(store, B) == (B,)
    assert pointer(store, D2) == "ECID:d2"


def test_remove_of_an_unknown_identity_changes_nothing() -> None:
    store, graph, _ = setup()
    txn = Txn(store)
    assert graph.remove(txn, A) is None
    assert txn.changes() == {}


def test_remove_heals_a_pointer_whose_cluster_is_missing() -> None:
    store, graph, _ = setup()
    store.write({pointer_key(D1, SHARDS): b'"ECID:d1"'})
    txn = Txn(store)
    assert graph.remove(txn, D1) == (D1, Cluster((D1,)))
    txn.commit()
    assert pointer(store, D1) is None


def test_remove_deletes_conflicts_refused_earlier_in_the_same_call() -> None:
    store, graph, feed = setup()
    link(store, graph, feed("web", ev("e1", "view", 1, "d1", "a@x.com")))
    txn = Txn(store)  # one engine call: a refused link, then a GDPR delete of b@x.com
    graph.link(txn, feed("web", ev("e2", "view", 2, "d1", "b@x.com")))
    assert graph.remove(txn, B) is not None
    txn.commit()
    assert conflicts(store, B) == [] and conflicts(store, D1) == []
