from pathlib import Path

import pytest

from config.settings import parse_settings
from operators.identity import Cluster, IdentityRules, Resolution, resolve
from schemas.records import Identity

CONFIG = """\
namespaces:
  - {name: CRMID, unique: true}
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
identity: {max_identities_per_cluster: 4}
sources: [{name: s, kind: event, path: x}]
"""


@pytest.fixture(scope="module")
def rules() -> IdentityRules:
    return IdentityRules.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {}))


class Graph:
    """A dict-backed graph that applies resolutions, like the engine does."""

    def __init__(self) -> None:
        self.pointers: dict[Identity, Identity] = {}
        self.clusters: dict[Identity, Cluster] = {}

    def canonical(self, identity: Identity) -> Identity | None:
        return self.pointers.get(identity)

    def cluster(self, canonical: Identity) -> Cluster | None:
        return self.clusters.get(canonical)

    def apply(self, res: Resolution) -> None:
        self.pointers.update(res.pointers)
        for canonical, cluster in res.clusters.items():
            if cluster is None:
                self.clusters.pop(canonical, None)
            else:
                self.clusters[canonical] = cluster


def link(graph: Graph, rules: IdentityRules, *ids: Identity) -> Resolution:
    res = resolve(graph, rules, sorted(ids, key=rules.sort_key), "s:0:1", None)
    graph.apply(res)
    return res


def test_new_identity_makes_a_singleton(rules: IdentityRules) -> None:
    g = Graph()
    res = link(g, rules, ("ECID", "d1"))
    assert res.canonical == ("ECID", "d1") and not res.merges
    assert g.clusters[("ECID", "d1")].members == (("ECID", "d1"),)


def test_login_merges_device_into_email_cluster(rules: IdentityRules) -> None:
    g = Graph()
    link(g, rules, ("ECID", "d1"))
    res = link(g, rules, ("ECID", "d1"), ("Email", "a@x"))
    assert res.canonical == ("Email", "a@x")
    assert [(m.survivor, m.loser) for m in res.merges] == [(("Email", "a@x"), ("ECID", "d1"))]
    assert g.pointers[("ECID", "d1")] == ("Email", "a@x")
    assert ("ECID", "d1") not in g.clusters


def test_unique_namespace_refuses_shared_device(rules: IdentityRules) -> None:
    g = Graph()
    link(g, rules, ("ECID", "tablet"), ("Email", "mum@x"))
    res = link(g, rules, ("ECID", "tablet"), ("Email", "kid@x"))
    # The record belongs to its best identity's cluster (kid), the tablet stays with mum.
    assert res.canonical == ("Email", "kid@x")
    assert [c.rule for c in res.conflicts] == ["unique:Email"]
    assert g.pointers[("ECID", "tablet")] == ("Email", "mum@x")
    assert set(g.clusters) == {("Email", "mum@x"), ("Email", "kid@x")}


def test_cluster_size_cap(rules: IdentityRules) -> None:
    g = Graph()
    link(g, rules, ("Email", "a@x"), ("ECID", "1"), ("ECID", "2"), ("ECID", "3"))
    res = link(g, rules, ("Email", "a@x"), ("ECID", "4"))
    assert [c.rule for c in res.conflicts] == ["max_identities_per_cluster"]
    assert len(g.clusters[("Email", "a@x")].members) == 4


def test_chained_merge_keeps_smallest_canonical_and_all_links(rules: IdentityRules) -> None:
    g = Graph()
    link(g, rules, ("ECID", "1"), ("ECID", "2"))
    link(g, rules, ("ECID", "3"))
    res = link(g, rules, ("ECID", "3"), ("ECID", "2"), ("CRMID", "c"))
    assert res.canonical == ("CRMID", "c")
    cluster = g.clusters[("CRMID", "c")]
    assert set(cluster.members) == {("CRMID", "c"), ("ECID", "1"), ("ECID", "2"), ("ECID", "3")}
    assert len(cluster.links) == 3
    assert all(g.pointers[m] == ("CRMID", "c") for m in cluster.members)
    assert set(g.clusters) == {("CRMID", "c")}


def test_normalisation(rules: IdentityRules) -> None:
    assert rules.normalize("Email", "  A.B@X.COM ") == "a.b@x.com"
    assert rules.normalize("ECID", " null ") is None
    assert rules.normalize("ECID", "000-000") is None
    assert rules.normalize("ECID", "e-1") == "e-1"
