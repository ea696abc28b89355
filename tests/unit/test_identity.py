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


def rules_of(text: str) -> IdentityRules:
    return IdentityRules.from_settings(parse_settings(text, Path("/c.yaml"), {}, {}))


DEFAULTS = rules_of(
    "namespaces: [{name: Email, unique: true, normalize: email}, {name: Phone, normalize: phone},"
    " {name: ECID}, {name: LoginId, unique: true}]\n"
    "sources: [{name: s, kind: event, path: x}]\n"
)


@pytest.mark.parametrize(
    ("namespace", "raw"),
    [
        ("LoginId", "N/A"),
        ("LoginId", " n/a "),
        ("LoginId", "NA"),
        ("LoginId", "Unknown"),
        ("LoginId", "NULL"),
        ("LoginId", "None"),
        ("LoginId", "nil"),
        ("LoginId", "Undefined"),
        ("LoginId", "ANONYMOUS"),
        ("LoginId", "test"),
        ("LoginId", "-1"),
        ("ECID", "00000000-0000-0000-0000-000000000000"),
        ("ECID", "0"),
        ("Email", "test@test.com"),
        ("Email", " TEST@Example.com "),
        ("Email", "noemail@shop.com"),
        ("Email", "no-email@shop.com"),
        ("Email", "none@none.com"),
        ("Email", "a@a.com"),
        ("Email", "XX@xx.com"),
        ("Email", "n/a@shop.com"),
        ("Email", "someone@shop.invalid"),
        ("Email", "N/A"),
        ("Phone", "N/A"),
        ("Phone", "unknown"),
    ],
)
def test_default_blocked_values_catch_placeholders(namespace: str, raw: str) -> None:
    assert not DEFAULTS.normalize(namespace, raw)


@pytest.mark.parametrize(
    ("namespace", "raw"),
    [
        ("Email", "dwright@enablementadobe.com"),
        ("Email", "a@b.com"),
        ("Email", "ab@ab.com"),
        ("Email", "testa@shop.com"),
        ("Email", "contest@shop.com"),
        ("Email", "anna@test.co.uk"),
        ("Email", "nadia@example.com"),
        ("LoginId", "nathan"),
        ("LoginId", "test-7"),
        ("LoginId", "10"),
        ("ECID", "00000000-0000-0000-0000-000000000001"),
        ("Phone", "+1 555 0100"),
    ],
)
def test_default_blocked_values_keep_real_looking_ids(namespace: str, raw: str) -> None:
    assert DEFAULTS.normalize(namespace, raw)


def test_blocked_patterns_ignore_case() -> None:
    rules = rules_of(
        "namespaces: [{name: ECID}]\nidentity: {blocked_values: ['^guest-[0-9]+$']}\n"
        "sources: [{name: s, kind: event, path: x}]\n"
    )
    assert rules.normalize("ECID", "GUEST-12") is None
    assert rules.normalize("ECID", "guest-x") == "guest-x"


def test_three_devices_logging_in_as_n_a_stay_three_people() -> None:
    g = Graph()
    for device in ("d1", "d2", "d3"):
        ids = [("ECID", device)]
        login = DEFAULTS.normalize("LoginId", "N/A")
        if login:
            ids.append(("LoginId", login))
        link(g, DEFAULTS, *ids)
    assert len(g.clusters) == 3


BLOB = rules_of(
    "namespaces: [{name: CRMID, unique: true}, {name: Email, unique: true},"
    " {name: Phone, normalize: phone}, {name: Kiosk, kind: person}, {name: ECID}]\n"
    "identity: {max_devices_per_identity: 3, device_window: 1h}\n"
    "sources: [{name: s, kind: event, path: x}]\n"
)
HOUR = 3_600_000


def at(graph: Graph, rules: IdentityRules, ts: int | None, *ids: Identity) -> Resolution:
    res = resolve(graph, rules, sorted(ids, key=rules.sort_key), f"s:0:{ts}", ts)
    graph.apply(res)
    return res


def test_person_and_device_namespaces() -> None:
    assert BLOB.person == {"CRMID", "Email", "Phone", "Kiosk"}  # unique, phone, declared
    assert DEFAULTS.max_devices == 10 and DEFAULTS.device_window_ms == HOUR


def test_blob_guard_refuses_the_device_over_the_limit_and_records_it() -> None:
    g = Graph()
    for n in range(3):
        assert not at(g, BLOB, 1000 + n, ("Email", "shared@x"), ("ECID", f"d{n}")).conflicts
    res = at(g, BLOB, 2000, ("Email", "shared@x"), ("ECID", "d3"))
    assert [(c.a, c.b, c.rule) for c in res.conflicts] == [
        (("Email", "shared@x"), ("ECID", "d3"), "max_devices_per_identity")
    ]
    assert res.canonical == ("Email", "shared@x")  # the record still belongs to the person
    assert g.pointers.get(("ECID", "d3")) in (None, ("ECID", "d3"))
    assert len(g.clusters[("Email", "shared@x")].members) == 4
    # A device already attached logs in again: nothing new, nothing refused.
    assert not at(g, BLOB, 2001, ("Email", "shared@x"), ("ECID", "d1")).conflicts


def test_blob_guard_window_is_event_time() -> None:
    g = Graph()
    for n in range(3):
        at(g, BLOB, n * 1000, ("Email", "p@x"), ("ECID", f"d{n}"))
    # An hour after the first three, a fourth device is fine: they left the window.
    assert not at(g, BLOB, 2000 + HOUR, ("Email", "p@x"), ("ECID", "d3")).conflicts
    cluster = g.clusters[("Email", "p@x")]
    assert [d for d, _ in cluster.recent] == [("ECID", "d3")]  # pruned to the window
    # The memory holds one window back from the newest attachment: a late record from the
    # first hour is judged against what is kept (d3 alone), so it is let through.
    assert not at(g, BLOB, 500, ("Email", "p@x"), ("ECID", "late")).conflicts
    # Within the window the limit holds: d3 and two more, then one too many.
    assert not at(g, BLOB, 2001 + HOUR, ("Email", "p@x"), ("ECID", "d4")).conflicts
    assert not at(g, BLOB, 2002 + HOUR, ("Email", "p@x"), ("ECID", "d5")).conflicts
    res = at(g, BLOB, 2003 + HOUR, ("Email", "p@x"), ("ECID", "d6"))
    assert [c.rule for c in res.conflicts] == ["max_devices_per_identity"]


def test_blob_guard_counts_a_device_cluster_joining_at_once() -> None:
    g = Graph()
    at(g, BLOB, 10, ("ECID", "a"), ("ECID", "b"))  # no person: no guard
    at(g, BLOB, 11, ("ECID", "c"), ("ECID", "a"))
    at(g, BLOB, 12, ("ECID", "d"), ("ECID", "a"))
    assert len(g.clusters[("ECID", "a")].members) == 4
    res = at(g, BLOB, 13, ("Email", "p@x"), ("ECID", "a"))
    assert [c.rule for c in res.conflicts] == ["max_devices_per_identity"]


def test_blob_guard_pools_two_people_joining() -> None:
    g = Graph()
    at(g, BLOB, 10, ("Email", "p@x"), ("ECID", "a"))
    at(g, BLOB, 11, ("Email", "p@x"), ("ECID", "b"))
    at(g, BLOB, 12, ("CRMID", "c1"), ("ECID", "c"))
    at(g, BLOB, 13, ("CRMID", "c1"), ("ECID", "d"))
    res = at(g, BLOB, 14, ("CRMID", "c1"), ("Email", "p@x"))
    assert [c.rule for c in res.conflicts] == ["max_devices_per_identity"]


def test_blob_guard_skips_records_without_time_and_can_be_off() -> None:
    g = Graph()
    for n in range(5):
        assert not at(g, BLOB, None, ("Email", "p@x"), ("ECID", f"d{n}")).conflicts
    off = rules_of(
        "namespaces: [{name: Email, unique: true}, {name: ECID}]\n"
        "identity: {max_devices_per_identity: null}\nsources: [{name: s, kind: event, path: x}]\n"
    )
    g = Graph()
    for n in range(20):
        assert not at(g, off, n, ("Email", "p@x"), ("ECID", f"d{n}")).conflicts


def test_cluster_json_round_trips_recent_and_reads_old_clusters() -> None:
    g = Graph()
    at(g, BLOB, 10, ("Email", "p@x"), ("ECID", "a"))
    cluster = g.clusters[("Email", "p@x")]
    assert cluster.recent == ((("ECID", "a"), 10),)
    assert Cluster.from_json(cluster.to_json()) == cluster
    old = {"members": [["Email", "p@x"]], "links": []}
    assert Cluster.from_json(old).recent == ()
    assert "recent" not in Cluster(members=(("Email", "p@x"),)).to_json()


def test_blob_guard_pools_people_at_the_times_they_gathered_devices() -> None:
    g = Graph()
    at(g, BLOB, 0, ("CRMID", "c1"), ("ECID", "a"))
    at(g, BLOB, 1, ("CRMID", "c1"), ("ECID", "b"))
    at(g, BLOB, 2, ("Email", "p@x"), ("ECID", "c"))
    at(g, BLOB, 3, ("Email", "p@x"), ("ECID", "d"))
    # Joined an hour later: four devices attached within one window is still a blob.
    res = at(g, BLOB, 10 + HOUR, ("CRMID", "c1"), ("Email", "p@x"))
    assert [c.rule for c in res.conflicts] == ["max_devices_per_identity"]
