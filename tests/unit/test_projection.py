"""The profile projection (DESIGN §11) from the engine: one document per profile a call wrote,
a forward for a merged-away profile, a deletion for a forgotten one; `as_of.seq` growing per
profile across calls and restarts; documents kept in the outbox like audience changes; none
made without a `profiles` destination."""

from __future__ import annotations

from typing import Any

from operators import queries
from operators.engine import Engine
from operators.identity import profile_id
from operators.steps.call import Output
from operators.store import MemoryStore
from schemas.records import ProfileDocument, output_from_stored
from tests.unit.steps.helpers import MIN, Feed, ev
from tests.unit.steps.helpers import settings as make_settings

CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
segments:
  - {id: buyers, rule: 'exists(event.eventType == "buy")'}
  - {id: big, rule: 'profile.traits.spent >= 100'}
traits:
  - {name: spent, value: 'sum(event.amount, event.eventType == "buy")'}
  - {name: views, value: 'count(event.eventType == "view", within="1h")'}
"""
PROJECTED = CONFIG + "destinations:\n  - {name: proj, kind: profiles, path: p.jsonl}\n"
D1, D2, A = ("ECID", "d1"), ("ECID", "d2"), ("Email", "a@x.com")


def docs(out: list[Output]) -> list[dict[str, Any]]:
    return [o.document for o in out if isinstance(o, ProfileDocument)]


def by_id(out: list[Output]) -> dict[str, dict[str, Any]]:
    return {d["profile_id"]: d for d in docs(out)}


def buy(feed: Feed, eid: str, ts: int, device: str, amount: int, email: str | None = None) -> Any:
    return feed("web", {**ev(eid, "buy", ts, device, email), "amount": amount})


def test_a_call_emits_the_document_of_every_profile_it_wrote() -> None:
    config = make_settings(PROJECTED)
    store = MemoryStore()
    engine, feed = Engine(config, store), Feed(config)
    out = engine.process(
        0,
        [
            buy(feed, "b1", 1 * MIN, "d1", 60),
            feed("web", ev("v1", "view", 2 * MIN, "d1")),
            buy(feed, "b2", 3 * MIN, "d1", 50),
            feed("web", ev("v2", "view", 3 * MIN, "d2")),
        ],
        1_000,
    )
    found = by_id(out)
    assert len(docs(out)) == 2  # one per profile and call, however many records
    d1 = found[profile_id(D1)]
    assert d1["traits"] == {"spent": 110, "views": 1}
    assert d1["segments"]["big"]["status"] == "entered"
    assert d1["updated_at"] == "1970-01-01T00:00:01Z"
    assert d1["as_of"]["event_time"] == "1970-01-01T00:03:00Z"
    # The same document as `cdp profile` at the worker's event time, plus when and as of what.
    shown = queries.find_profile(store, config.shards, D1, (engine.index, engine.now_ms))
    assert {k: v for k, v in d1.items() if k not in ("updated_at", "as_of")} == shown
    # Kept in the outbox like the audience changes: sent again as they were after a crash.
    again = engine.outbox_after(0, 0)
    assert [o.document for o in again if isinstance(o, ProfileDocument)] == docs(out)


def test_seq_grows_per_profile_across_calls_and_restarts() -> None:
    config = make_settings(PROJECTED)
    store = MemoryStore()
    engine, feed = Engine(config, store), Feed(config)
    first = by_id(engine.process(0, [buy(feed, "b1", 1 * MIN, "d1", 10)], 5))
    second = by_id(engine.process(0, [buy(feed, "b2", 2 * MIN, "d1", 10)], 5))
    pid = profile_id(D1)
    assert second[pid]["as_of"]["seq"] > first[pid]["as_of"]["seq"]
    restarted = Engine(config, store)  # the same wall clock: the saved counter goes on
    third = by_id(restarted.process(0, [buy(feed, "b3", 3 * MIN, "d1", 10)], 5))
    assert third[pid]["as_of"]["seq"] > second[pid]["as_of"]["seq"]
    # A state rebuilt from scratch later numbers above: the wall clock in microseconds.
    fresh = Engine(config, MemoryStore())
    rebuilt = by_id(fresh.process(0, [buy(Feed(config), "b1", 1 * MIN, "d1", 10)], 10_000))
    assert rebuilt[pid]["as_of"]["seq"] > third[pid]["as_of"]["seq"]


def test_a_merged_away_profile_forwards_with_its_identities() -> None:
    config = make_settings(PROJECTED)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    first = [
        buy(feed, "b1", 1 * MIN, "d1", 10, email="a@x.com"),
        buy(feed, "b2", 1 * MIN, "d2", 20),
    ]
    engine.process(0, first, 0)
    out = engine.process(0, [buy(feed, "b3", 2 * MIN, "d2", 5, email="a@x.com")], 0)
    found = by_id(out)
    survivors = [d for d in found.values() if "merged_into" not in d]
    forwards = [d for d in found.values() if "merged_into" in d]
    assert len(survivors) == 1 and len(forwards) == 1
    survivor, forward = survivors[0], forwards[0]
    assert forward["merged_into"] == survivor["profile_id"]
    assert set(forward) == {"profile_id", "merged_into", "identities", "updated_at", "as_of"}
    assert sorted(survivor["identities"]["ECID"]) == ["d1", "d2"]
    assert survivor["traits"]["spent"] == 35
    # Every identity of the forward now belongs to the survivor.
    moved = [v for vs in forward["identities"].values() for v in vs]
    assert set(moved) <= {v for vs in survivor["identities"].values() for v in vs}


def test_forget_emits_a_deletion_and_drops_the_persons_waiting_documents() -> None:
    config = make_settings(PROJECTED)
    store = MemoryStore()
    engine, feed = Engine(config, store), Feed(config)
    engine.process(0, [buy(feed, "b1", 1 * MIN, "d1", 10, email="a@x.com")], 0)
    waiting = engine.outbox_after(0, 0)
    assert any(isinstance(o, ProfileDocument) for o in waiting)
    out = engine.forget(0, A, 7)
    assert out is not None
    deleted = docs(out)
    # The profile first, then every id a profile of the person's identities could have had
    # (a merged-away profile's forward names identities: on a compacted topic it must go).
    assert deleted[0]["profile_id"] == profile_id(A)
    assert {d["profile_id"] for d in deleted} == {profile_id(A), profile_id(D1)}
    for doc in deleted:
        assert doc["deleted"] is True
        assert set(doc) == {"profile_id", "deleted", "updated_at", "as_of"}
    left = [o for o in engine.outbox_after(0, 0) if isinstance(o, ProfileDocument)]
    assert [o.document for o in left] == deleted  # the earlier documents went
    # Stored and read back the same (a crash between the commit and the sink).
    assert all(o.deleted and output_from_stored(o.to_stored()) == o for o in left)


def test_forget_after_a_merge_deletes_the_forward_too() -> None:
    config = make_settings(PROJECTED)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [buy(feed, "b1", 1 * MIN, "d1", 10, email="a@x.com")], 0)
    engine.process(0, [buy(feed, "b2", 1 * MIN, "d2", 20)], 0)
    merged = by_id(engine.process(0, [buy(feed, "b3", 2 * MIN, "d2", 5, email="a@x.com")], 0))
    (forward,) = [d for d in merged.values() if "merged_into" in d]
    out = engine.forget(0, A, 9)
    assert out is not None
    assert forward["profile_id"] in {d["profile_id"] for d in docs(out) if d.get("deleted")}


def test_no_profiles_destination_no_documents() -> None:
    config = make_settings(CONFIG)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    out = engine.process(0, [buy(feed, "b1", 1 * MIN, "d1", 10)], 0)
    assert docs(out) == [] and engine.projection is None
    assert engine.profiles.touched is None


def test_a_timer_that_changes_a_membership_emits_the_document() -> None:
    config = make_settings(
        PROJECTED.replace(
            "segments:\n", "segments:\n  - {id: browsing, rule: 'profile.traits.views >= 1'}\n"
        )
    )
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [feed("web", ev("v1", "view", 1 * MIN, "d1"))], 0)
    out = engine.process(0, [feed("web", ev("x", "other", 3 * 60 * MIN, "d2"))], 0)
    d1 = by_id(out)[profile_id(D1)]
    assert d1["segments"]["browsing"]["status"] == "exited" and d1["traits"]["views"] == 0
