"""operators.steps.profiles alone: profile documents, event-id dedup, the profile step's copy
of its members, and who a profile is for outputs."""

from __future__ import annotations

from operators import profile as prof
from operators.identity import Cluster, IdentityRules
from operators.steps.graph import cluster_key
from operators.steps.profiles import Profiles, profile_key, seen_key
from operators.steps.stats import EngineStats
from operators.store import MemoryStore, Txn
from schemas.records import Identity
from tests.unit.steps.helpers import Feed, ev, settings

CONF = settings()
A: Identity = ("Email", "a@x.com")
D1: Identity = ("ECID", "d1")
D2: Identity = ("ECID", "d2")


def profiles() -> Profiles:
    return Profiles(IdentityRules.from_settings(CONF), CONF.shards, EngineStats())


def test_load_gives_a_new_profile_then_the_stored_one() -> None:
    store, steps = MemoryStore(), profiles()
    txn = Txn(store)
    profile, fresh = steps.load(txn, A)
    assert fresh and profile == prof.new_profile()
    assert steps.get(txn, A) is None
    steps.put(txn, A, {**profile, "attrs": {"tier": "vip"}})
    txn.commit()
    assert store.get(profile_key(A, CONF.shards)) is not None
    stored, fresh = steps.load(Txn(store), A)
    assert not fresh and stored["attrs"] == {"tier": "vip"}
    assert steps.get(Txn(store), D1) is None  # keyed by canonical identity


def test_delete_removes_the_profile() -> None:
    store, steps = MemoryStore(), profiles()
    txn = Txn(store)
    steps.put(txn, A, prof.new_profile())
    txn.commit()
    steps.delete(txn, A)
    txn.commit()
    assert store.get(profile_key(A, CONF.shards)) is None
    assert steps.load(Txn(store), A)[1]


def test_an_event_id_is_applied_once_across_calls() -> None:
    store, steps, feed = MemoryStore(), profiles(), Feed(CONF)
    txn = Txn(store)
    first = feed("web", ev("e1", "buy", 1, "d1"))
    assert not steps.duplicate(txn, first)
    assert steps.duplicate(txn, first)  # again in the same call
    txn.commit()
    assert store.get(seen_key("e1")) == b""
    # Same `_id` from another offset and another person: still the same event.
    again = feed("web", ev("e1", "buy", 1, "d2"))
    assert steps.duplicate(Txn(store), again)
    assert not steps.duplicate(Txn(store), feed("web", ev("e2", "buy", 1, "d1")))
    assert steps.stats.duplicates == 2


def test_events_without_an_id_are_told_apart_by_content() -> None:
    store, steps, feed = MemoryStore(), profiles(), Feed(CONF)
    txn = Txn(store)
    body = ev("x", "buy", 1, "d1")
    del body["_id"]
    other = {**body, "timestamp": 2}
    assert not steps.duplicate(txn, feed("web", body))
    assert not steps.duplicate(txn, feed("web", other))
    assert steps.duplicate(txn, feed("web", body))  # the same content re-sent


def test_with_members_only_grows_and_keeps_namespace_order() -> None:
    steps = profiles()
    base = prof.new_profile()
    one = steps.with_members(base, (D2,))
    assert one["ids"] == [["ECID", "d2"]]
    both = steps.with_members(one, (D1, A))
    assert both["ids"] == [["Email", "a@x.com"], ["ECID", "d1"], ["ECID", "d2"]]
    assert one["ids"] == [["ECID", "d2"]]  # the profile handed in is not mutated
    # A smaller or equal set of members (an older message) changes nothing.
    assert steps.with_members(both, (D1,)) is both
    assert steps.with_members(both, ()) is both


def test_cluster_of_prefers_the_profiles_own_members() -> None:
    store, steps = MemoryStore(), profiles()
    txn = Txn(store)
    txn.put_json(cluster_key(A, CONF.shards), Cluster((A, D1)).to_json())
    # The graph (one process) says who the profile is when it holds no members itself.
    assert steps.cluster_of(txn, A, prof.new_profile()) == Cluster((A, D1))
    # With several processes the profile step keeps its own copy: that one is the truth.
    held = steps.with_members(prof.new_profile(), (A, D1, D2))
    assert steps.cluster_of(txn, A, held) == Cluster((A, D1, D2))
    # Neither: the canonical identity alone.
    assert steps.cluster_of(Txn(MemoryStore()), D2, prof.new_profile()) == Cluster((D2,))
