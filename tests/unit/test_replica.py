"""operators.replica: the server's copy of the profile projection, on the in-memory store."""

from __future__ import annotations

from typing import Any

import orjson

from operators import replica
from operators.store import MemoryStore
from tests.serve_helpers import deleted, document, merged


def _apply(store: MemoryStore, *records: Any) -> dict[str, int]:
    batch = [r if isinstance(r, tuple) else (None, r) for r in records]
    return dict(replica.apply_batch(store, batch))


def _lookup(store: MemoryStore, identity: str) -> str | None:
    namespace, value = identity.split(":", 1)
    found = replica.lookup(store, namespace, value)
    return None if found is None else orjson.loads(found.document)["profile_id"]


def test_lookup_by_every_identity_of_a_live_document() -> None:
    store = MemoryStore()
    _apply(store, document("p_1", 1, {"Email": ["a@x.com"], "ECID": ["e1", "e2"]}))
    assert [_lookup(store, i) for i in ("Email:a@x.com", "ECID:e1", "ECID:e2")] == ["p_1"] * 3
    assert _lookup(store, "Email:b@x.com") is None


def test_the_highest_seq_wins_and_a_replayed_older_document_is_stale() -> None:
    store = MemoryStore()
    newer = document("p_1", 5, {"Email": ["a@x.com"]}, attributes={"v": 5})
    older = document("p_1", 3, {"Email": ["a@x.com"], "ECID": ["old"]}, attributes={"v": 3})
    assert _apply(store, newer, older, newer) == {"applied": 1, "stale": 2, "bad": 0}
    found = replica.profile(store, "p_1")
    assert found is not None and orjson.loads(found.document)["attributes"] == {"v": 5}
    assert _lookup(store, "ECID:old") is None


def test_an_identity_dropped_from_a_newer_document_no_longer_finds_it() -> None:
    store = MemoryStore()
    _apply(store, document("p_1", 1, {"Email": ["a@x.com"], "ECID": ["e1"]}))
    _apply(store, document("p_1", 2, {"Email": ["a@x.com"]}))
    assert _lookup(store, "ECID:e1") is None
    assert _lookup(store, "Email:a@x.com") == "p_1"


def test_merged_into_re_points_the_losers_identities_in_either_order() -> None:
    for survivor_first in (True, False):
        store = MemoryStore()
        loser = document("p_loser", 1, {"ECID": ["e1"]})
        survivor = document("p_win", 4, {"Email": ["a@x.com"], "ECID": ["e1"]})
        forward = merged("p_loser", "p_win", 2, {"ECID": ["e1"]})
        _apply(store, loser)
        _apply(store, *((survivor, forward) if survivor_first else (forward, survivor)))
        assert _lookup(store, "ECID:e1") == "p_win"
        found = replica.profile(store, "p_loser")  # the old id forwards to the survivor
        assert found is not None and found.profile_id == "p_win"
        # the loser's own live document, re-sent by a replay, does not bring it back
        _apply(store, loser)
        assert _lookup(store, "ECID:e1") == "p_win"


def test_deleted_and_tombstone_remove_the_profile_and_its_identities() -> None:
    store = MemoryStore()
    _apply(store, document("p_1", 1, {"Email": ["a@x.com"]}))
    _apply(store, deleted("p_1", 2))
    assert _lookup(store, "Email:a@x.com") is None and replica.profile(store, "p_1") is None
    _apply(store, document("p_1", 1, {"Email": ["a@x.com"]}))  # a replayed older one
    assert _lookup(store, "Email:a@x.com") is None

    _apply(store, document("p_2", 1, {"Email": ["b@x.com"]}))
    _apply(store, ("p_2", None))  # Kafka: key, no value
    assert _lookup(store, "Email:b@x.com") is None and replica.profile(store, "p_2") is None


def test_records_that_are_no_documents_are_counted_bad_and_change_nothing() -> None:
    store = MemoryStore()
    bad = [
        "not JSON",
        {"profile_id": "p_1"},  # no as_of
        {"profile_id": 7, "as_of": {"seq": 1}},
        {"profile_id": "p_1", "as_of": {"seq": True}},
    ]
    assert _apply(store, *bad, (None, None)) == {"applied": 0, "stale": 0, "bad": 5}
    assert replica.profile(store, "p_1") is None
