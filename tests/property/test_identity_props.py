"""Invariants of the identity graph (hypothesis), against an independent offline union-find."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import parse_settings
from operators.identity import IdentityRules, resolve
from schemas.records import Identity
from tests.unit.test_identity import Graph

CONFIG = """\
namespaces:
  - {name: CRMID, unique: true}
  - {name: Email, unique: true}
  - {name: ECID}
identity: {max_identities_per_cluster: 1000}
sources: [{name: s, kind: event, path: x}]
"""
RULES = IdentityRules.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {}))

identity = st.one_of(
    st.tuples(st.just("CRMID"), st.sampled_from("abcd")),
    st.tuples(st.just("Email"), st.sampled_from("efgh")),
    st.tuples(st.just("ECID"), st.sampled_from("0123456789")),
)
records = st.lists(st.lists(identity, min_size=1, max_size=4, unique=True), min_size=1, max_size=30)


def run(recs: list[list[Identity]]) -> Graph:
    graph = Graph()
    for i, ids in enumerate(recs):
        res = resolve(graph, RULES, sorted(ids, key=RULES.sort_key), f"s:0:{i}", None)
        graph.apply(res)
    return graph


def clusters(graph: Graph) -> set[frozenset[Identity]]:
    return {frozenset(c.members) for c in graph.clusters.values()}


def offline(recs: list[list[Identity]]) -> set[frozenset[Identity]]:
    """Plain union-find with no guards: the answer for conflict-free input."""
    parent: dict[Identity, Identity] = {}

    def find(x: Identity) -> Identity:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ids in recs:
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
        find(ids[0])
    groups: dict[Identity, set[Identity]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return {frozenset(g) for g in groups.values()}


def conflict_free(recs: list[list[Identity]]) -> bool:
    return all(
        len({v for ns, v in group if ns == unique}) <= 1
        for group in offline(recs)
        for unique in ("CRMID", "Email")
    )


@settings(max_examples=300, deadline=None)
@given(records)
def test_every_identity_is_in_exactly_one_cluster(recs: list[list[Identity]]) -> None:
    graph = run(recs)
    seen = [m for c in graph.clusters.values() for m in c.members]
    assert len(seen) == len(set(seen))
    for member in seen:
        canonical = graph.pointers[member]
        assert member in graph.clusters[canonical].members
        assert canonical == min(graph.clusters[canonical].members, key=RULES.sort_key)


@settings(max_examples=300, deadline=None)
@given(records)
def test_no_cluster_breaks_a_unique_namespace(recs: list[list[Identity]]) -> None:
    for cluster in run(recs).clusters.values():
        for unique in ("CRMID", "Email"):
            assert len([m for m in cluster.members if m[0] == unique]) <= 1


@settings(max_examples=300, deadline=None)
@given(records, st.randoms(use_true_random=False))
def test_conflict_free_input_matches_offline_union_find_in_any_order(
    recs: list[list[Identity]], rnd: object
) -> None:
    if not conflict_free(recs):
        return
    expected = offline(recs)
    assert clusters(run(recs)) == expected
    shuffled = list(recs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert clusters(run(shuffled)) == expected


@settings(max_examples=200, deadline=None)
@given(records)
def test_replaying_the_same_records_changes_nothing(recs: list[list[Identity]]) -> None:
    graph = run(recs)
    before = (dict(graph.pointers), dict(graph.clusters))
    for i, ids in enumerate(recs):
        res = resolve(graph, RULES, sorted(ids, key=RULES.sort_key), f"s:0:{i}", None)
        assert not res.merges and not res.pointers
        graph.apply(res)
    assert (graph.pointers, graph.clusters) == before


GUARDED = IdentityRules.from_settings(
    parse_settings(
        CONFIG.replace("max_identities_per_cluster: 1000", "max_devices_per_identity: 2"),
        Path("/c.yaml"),
        {},
        {},
    )
)


@settings(max_examples=300, deadline=None)
@given(records, st.lists(st.integers(0, 5), min_size=30, max_size=30))
def test_blob_guard_bounds_devices_per_person_within_a_window(
    recs: list[list[Identity]], hours: list[int]
) -> None:
    """Whatever the order, no person cluster gathers more than the limit of device ids within
    one window; all other invariants still hold."""
    graph = Graph()
    for i, ids in enumerate(recs):
        ts = hours[i] * 3_600_000
        res = resolve(graph, GUARDED, sorted(ids, key=GUARDED.sort_key), f"s:0:{i}", ts)
        graph.apply(res)
    seen = [m for c in graph.clusters.values() for m in c.members]
    assert len(seen) == len(set(seen))
    for cluster in graph.clusters.values():
        if not any(ns in ("CRMID", "Email") for ns, _ in cluster.members):
            continue
        for unique in ("CRMID", "Email"):
            assert len([m for m in cluster.members if m[0] == unique]) <= 1
        # What the guard keeps is one window back from the newest: never over the limit.
        assert len(cluster.recent) <= 2
        times = sorted(t for _, t in cluster.recent)
        assert not times or times[-1] - times[0] < 3_600_000
    if len(set(hours[: len(recs)])) == 1:  # one window: no person cluster holds 3 devices
        for cluster in graph.clusters.values():
            if any(ns != "ECID" for ns, _ in cluster.members):
                assert len([m for m in cluster.members if m[0] == "ECID"]) <= 2


@settings(max_examples=300, deadline=None)
@given(records)
def test_blob_guard_in_one_window_no_person_holds_more_devices_than_the_limit(
    recs: list[list[Identity]],
) -> None:
    graph = Graph()
    for i, ids in enumerate(recs):
        res = resolve(graph, GUARDED, sorted(ids, key=GUARDED.sort_key), f"s:0:{i}", 1000 + i)
        graph.apply(res)
    for cluster in graph.clusters.values():
        if any(ns != "ECID" for ns, _ in cluster.members):
            assert len([m for m in cluster.members if m[0] == "ECID"]) <= 2
