"""operators.steps.rollout: a state built under audience definitions A, then the engine built
again under B over the same store (what a restart with an edited config looks like). Added and
changed audiences are evaluated over every profile, their inputs rebuilt from the history
(reason `definition`); removed ones exit their members (reason `removed`) and leave `segs`; a
stale profile is upgraded before a record, a merge or a timer touches it; the pass goes in
batches with a saved cursor, and a crash midway changes neither the result nor the change ids."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from operators import profile as prof
from operators import queries
from operators.engine import Engine
from operators.steps.call import Call, Output
from operators.steps.profiles import profile_key
from operators.steps.rollout import CURRENT_KEY, cursor_key
from operators.store import MemoryStore, RocksStore, Store, Txn
from schemas.records import Adopt, AudienceChange, Identity, Move, Record, Routed, Tick
from tests.unit.steps.helpers import MIN, Feed, H, audience, ev
from tests.unit.steps.helpers import settings as make_settings

BASE = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
profile: {rollout_batch: 2}
segments:
"""
BUYERS = """  - {id: buyers, rule: 'exists(event.eventType == "buy")'}\n"""
VIP = """  - {id: vip, rule: 'profile.tier == "vip"'}\n"""
BUSY = """  - {id: busy, rule: 'count(event.eventType == "view", within="1h") >= 2'}\n"""
CARTS = """  - {id: carts, rule: 'count(event.eventType == "cart") >= 2'}\n"""
LOOKS = """  - {id: looks, rule: 'count(event.eventType == "look", within="1h") >= 2'}\n"""


def spend(limit: int) -> str:
    return f"""  - {{id: spend, rule: 'sum(event.amount, event.eventType == "buy") > {limit}'}}\n"""


A = make_settings(BASE + BUYERS + spend(250) + VIP + BUSY)
# B: spend's threshold lowered, vip removed, two rules over events no rule of A read.
B = make_settings(BASE + BUYERS + spend(100) + BUSY + CARTS + LOOKS)
A_ID: Identity = ("Email", "a@x.com")
D1: Identity = ("ECID", "d1")
D2: Identity = ("ECID", "d2")
D3: Identity = ("ECID", "d3")


def buy(feed: Feed, eid: str, ts: int, device: str, amount: int) -> Record:
    return feed("web", {**ev(eid, "buy", ts, device), "amount": amount})


def built_under_a(store: Store) -> Feed:
    """A's state: d1 bought for 150 and put two items in a cart, d2 looked twice (no rule of A
    reads carts or looks), d3 spent 300, a@x.com is vip, d4 and d5 viewed once."""
    engine, feed = Engine(A, store), Feed(A)
    engine.process(
        0,
        [
            buy(feed, "b1", 1 * MIN, "d1", 150),
            feed("web", ev("c1", "cart", 2 * MIN, "d1")),
            feed("web", ev("c2", "cart", 3 * MIN, "d1")),
            feed("web", ev("l1", "look", 4 * MIN, "d2")),
            feed("web", ev("l2", "look", 5 * MIN, "d2")),
            feed("crm", {"email": "a@x.com", "tier": "vip"}),
            buy(feed, "b2", 6 * MIN, "d3", 300),
            feed("web", ev("v1", "view", 6 * MIN, "d4")),
            feed("web", ev("v2", "view", 6 * MIN, "d5")),
        ],
        0,
    )
    return feed


def profile(store: Store, canonical: Identity) -> prof.Profile:
    held: prof.Profile | None = Txn(store).get_json(profile_key(canonical, A.shards))
    assert held is not None
    return held


def input_key(engine: Engine, segment: str) -> str:
    """The key of the one aggregate a segment reads."""
    (rule,) = [r for r in engine.index.rules if r.segment_id == segment]
    return rule.aggregates[0].key


def roll(engine: Engine) -> list[AudienceChange]:
    """Batches until the pass is done, as the apply step does after a kick (`Engine.roll`)."""
    out: list[Output] = []
    while engine.rolling(None):
        out += engine.roll(0, None, 0)
    return audience(out)


def seen(changes: list[AudienceChange]) -> list[tuple[str, str, str, str]]:
    """(who, segment, status, reason), sorted: the pass goes in key order, not by person."""
    return sorted(
        (",".join(v for vs in c.identities.values() for v in vs), c.segment_id, c.status, c.reason)
        for c in changes
    )


# -- what an edit does ------------------------------------------------------------------------


def test_an_edit_is_rolled_out_over_every_profile() -> None:
    store = MemoryStore()
    built_under_a(store)
    engine = Engine(B, store)
    assert engine.rolling(None)
    assert seen(roll(engine)) == [
        ("a@x.com", "vip", "exited", "removed"),
        ("d1", "carts", "entered", "definition"),  # rebuilt from the history
        ("d1", "spend", "entered", "definition"),  # 150 > 100 now
        ("d2", "looks", "entered", "definition"),
    ]
    assert not engine.rolling(None)
    # The inputs no rule of A read are the history's: d1's two carts, d2's two looks.
    d1 = profile(store, D1)
    assert set(d1["segs"]) == {"buyers", "spend", "carts"}
    carts = input_key(engine, "carts")
    assert d1["aggs"][carts] == 2
    # The removed segment left the profile; its transition count stays in `gone`.
    a = profile(store, A_ID)
    assert a["segs"] == {} and a["gone"] == {"vip": 2}
    assert queries.segment_sizes(store) == {"buyers": 2, "spend": 2, "carts": 1, "looks": 1}
    exported = [p["segments"] for p in queries.iter_profiles(store, B.shards)]
    assert all("vip" not in segments for segments in exported)
    assert store.get(CURRENT_KEY) == engine.rollout.version.encode()


def test_a_restart_with_the_same_definitions_rolls_nothing_out() -> None:
    store = MemoryStore()
    built_under_a(store)
    engine = Engine(B, store)
    roll(engine)
    again = Engine(B, store)
    assert not again.rolling(None)
    assert again.roll(0, None, 0) == []
    assert Engine(A, MemoryStore()).rolling(None) is False  # a new state: nothing is stale


def test_an_edit_that_raises_a_threshold_exits_with_reason_definition() -> None:
    store = MemoryStore()
    built_under_a(store)
    engine = Engine(make_settings(BASE + BUYERS + spend(400) + VIP + BUSY), store)
    assert seen(roll(engine)) == [("d3", "spend", "exited", "definition")]
    assert profile(store, D3)["segs"]["spend"][0] is False


def test_only_the_spelling_changed_rolls_nothing_out() -> None:
    store = MemoryStore()
    built_under_a(store)
    respelled = BASE + BUYERS.replace("==", " == ") + spend(250) + VIP + BUSY
    assert roll(Engine(make_settings(respelled), store)) == []


def test_a_removed_segment_added_again_numbers_on() -> None:
    """Change ids are per (profile, segment, sequence): a segment removed and added back must
    not reuse the sequence of its earlier transitions."""
    store = MemoryStore()
    built_under_a(store)
    removed = roll(Engine(B, store))
    back = roll(
        Engine(make_settings(BASE + BUYERS + spend(100) + BUSY + CARTS + LOOKS + VIP), store)
    )
    vip = [c for c in removed + back if c.segment_id == "vip"]
    assert [(c.status, c.reason, c.sequence) for c in vip] == [
        ("exited", "removed", 2),
        ("entered", "definition", 3),
    ]
    a = profile(store, A_ID)
    assert a["segs"]["vip"][0] is True and a["segs"]["vip"][2] == 3
    assert "gone" not in a
    ids = [c.id for c in vip]
    assert len(set(ids)) == len(ids)


def test_a_windowed_added_rule_gets_a_timer() -> None:
    store = MemoryStore()
    feed = built_under_a(store)
    engine = Engine(B, store)
    roll(engine)
    d2 = profile(store, D2)
    assert d2["segs"]["looks"][0] is True
    assert d2["timer"] == 4 * MIN + H  # the first look leaves the window
    assert engine.next_timer_ms() == 4 * MIN + H
    # Event time passes it: d2 exits on its timer.
    out = audience(engine.process(0, [feed("web", ev("x1", "view", 2 * H, "d9"))], 0))
    assert [(c.segment_id, c.status, c.reason, c.identities) for c in out] == [
        ("looks", "exited", "timer", {"ECID": ["d2"]})
    ]


# -- stale profiles touched before the pass reaches them ----------------------------------------


def test_a_record_on_a_stale_profile_applies_after_the_upgrade() -> None:
    store = MemoryStore()
    feed = built_under_a(store)
    engine = Engine(B, store)
    # No kick yet: the record's profile is brought to B first, then the record applies to it.
    out = audience(engine.process(0, [feed("web", ev("c3", "cart", 7 * MIN, "d1"))], 0))
    assert [(c.segment_id, c.status, c.reason) for c in out] == [
        ("carts", "entered", "definition"),
        ("spend", "entered", "definition"),
    ]
    d1 = profile(store, D1)
    carts = input_key(engine, "carts")
    assert d1["aggs"][carts] == 3  # the history's two, then the record: not counted twice
    assert d1["v"] == engine.rollout.version
    # The pass does not upgrade it again.
    assert all(c.identities != {"ECID": ["d1"]} for c in roll(engine))


def test_a_record_on_a_stale_profile_is_counted_once_when_it_decides() -> None:
    store = MemoryStore()
    feed = built_under_a(store)
    engine = Engine(make_settings(BASE + BUYERS + spend(250) + VIP + BUSY + LOOKS), store)
    # d3 has no look yet: a first look upgrades it (nothing to rebuild enters), a second enters.
    out = audience(
        engine.process(
            0,
            [
                feed("web", ev("l3", "look", 7 * MIN, "d3")),
                feed("web", ev("l4", "look", 8 * MIN, "d3")),
            ],
            0,
        )
    )
    assert [(c.segment_id, c.status, c.reason) for c in out] == [("looks", "entered", "event:l4")]


def test_a_merge_of_stale_profiles_upgrades_both_before_merging() -> None:
    store = MemoryStore()
    feed = built_under_a(store)
    engine = Engine(B, store)
    # a@x.com (vip, removed in B) and d2 (two looks) merge: each is brought to B first.
    out = audience(engine.process(0, [feed("web", ev("lg", "login", 7 * MIN, "d2", "a@x.com"))], 0))
    assert [(c.segment_id, c.status, c.reason, c.identities) for c in out] == [
        # The survivor first (its cluster already holds d2: the graph linked the login).
        ("vip", "exited", "removed", {"Email": ["a@x.com"], "ECID": ["d2"]}),
        # The loser: brought to B (its looks rebuilt), then it exits as it merges away.
        ("looks", "entered", "definition", {"ECID": ["d2"]}),
        ("looks", "exited", "merge", {"ECID": ["d2"]}),
        ("looks", "entered", "merge", {"Email": ["a@x.com"], "ECID": ["d2"]}),
    ]
    merged = profile(store, A_ID)
    looks = input_key(engine, "looks")
    assert sum(n for _, n in merged["aggs"][looks]) == 2  # d2's looks, once
    assert "vip" not in merged["segs"]


def test_a_timer_on_a_stale_profile_upgrades_it_first() -> None:
    store = MemoryStore()
    engine, feed = Engine(A, store), Feed(A)
    engine.process(
        0,
        [
            feed("web", ev("v1", "view", 0, "d1")),
            feed("web", ev("v2", "view", MIN, "d1")),
            feed("web", ev("c1", "cart", 2 * MIN, "d1")),
            feed("web", ev("c2", "cart", 3 * MIN, "d1")),
        ],
        0,
    )
    assert profile(store, D1)["timer"] == H
    engine = Engine(B, store)
    # Another profile's record moves event time past d1's timer, before any kick.
    out = audience(engine.process(0, [feed("web", ev("x", "view", 2 * H, "d9"))], 0))
    d1 = [
        (c.segment_id, c.status, c.reason, c.event_time_ms)
        for c in out
        if "d1" in str(c.identities)
    ]
    assert d1 == [("carts", "entered", "definition", H), ("busy", "exited", "timer", H)]
    assert profile(store, D1)["v"] == engine.rollout.version


def test_a_timer_on_a_stale_profile_still_flips_what_it_was_due_for() -> None:
    """The edit does not touch `recent`; d1's only view leaves its window at 1h, when its
    timer fires. Upgrading the profile at the timer must not swallow that exit."""
    recent = """  - {id: recent, rule: 'count(event.eventType == "view", within="1h") >= 1'}\n"""
    store = MemoryStore()
    engine, feed = Engine(make_settings(BASE + recent), store), Feed(A)
    engine.process(0, [feed("web", ev("v1", "view", 0, "d1"))], 0)
    engine = Engine(make_settings(BASE + recent + CARTS), store)
    out = audience(engine.process(0, [feed("web", ev("x", "buy", 3 * H, "d9"))], 0))
    assert [(c.segment_id, c.status, c.reason, c.event_time_ms) for c in out] == [
        ("recent", "exited", "timer", H)
    ]
    assert profile(store, D1)["segs"]["recent"][0] is False


# -- the pass: batches, cursor, crash --------------------------------------------------------


def test_the_pass_goes_in_batches_with_its_cursor_saved() -> None:
    store = MemoryStore()
    built_under_a(store)  # six profiles: a@x.com, d1..d5
    engine = Engine(B, store)
    keys = [k for k, _ in store.scan(b"p/")]
    assert len(keys) == 6
    done = []
    while engine.rolling(None):
        engine.roll(0, None, 0)
        cursor = Txn(store).get_json(cursor_key(None))
        done.append((cursor["after"], cursor["profiles"], cursor["done"]))
        stamped = [k for k, raw in store.scan(b"p/") if b'"v":' in raw]
        assert stamped == keys[: cursor["profiles"]]  # exactly the batches so far
    # rollout_batch 2: three batches (the last one finds no key after it: done).
    assert done == [
        (keys[1].decode(), 2, False),
        (keys[3].decode(), 4, False),
        (keys[5].decode(), 6, True),
    ]
    assert not engine.rolling(None)


def test_per_shard_kicks_roll_out_their_own_shard() -> None:
    store = MemoryStore()
    built_under_a(store)
    engine = Engine(B, store)
    shard = int(next(iter(store.scan(b"p/")))[0].split(b"/")[1])
    while engine.rolling(shard):
        engine.roll(0, shard, 0)
    stale = [k for k, raw in store.scan(b"p/") if b'"v":' not in raw]
    assert len(stale) == 5 and all(f"/{shard:04d}/".encode() not in k for k in stale)
    for other in range(B.shards):
        while engine.rolling(other):
            engine.roll(0, other, 0)
    assert [k for k, raw in store.scan(b"p/") if b'"v":' not in raw] == []


def state(store: Store) -> dict[bytes, Any]:
    """What the rollout leaves: profiles, timers, cursors and definitions."""
    return {k: v for prefix in (b"p/", b"t/", b"h/", b"meta/defs/") for k, v in store.scan(prefix)}


def ids(changes: list[AudienceChange]) -> set[tuple[str, str, str, str, int]]:
    return {(c.id, c.segment_id, c.status, c.reason, c.event_time_ms) for c in changes}


@pytest.mark.parametrize("crash_after", [0, 1, 2])
def test_a_crash_midway_gives_the_same_profiles_and_change_ids(
    tmp_path: Path, crash_after: int
) -> None:
    """On RocksDB: `crash_after` batches committed, the next one's transaction dropped (the
    process died before its WriteBatch), then the engine built again over the same state."""
    built = tmp_path / "a"
    store = RocksStore(built)
    built_under_a(store)
    store.close()
    shutil.copytree(built, tmp_path / "straight")
    shutil.copytree(built, tmp_path / "crashed")

    straight = RocksStore(tmp_path / "straight")
    want = roll(Engine(B, straight))

    crashed = RocksStore(tmp_path / "crashed")
    engine = Engine(B, crashed)
    got: list[AudienceChange] = []
    for _ in range(crash_after):
        got += audience(engine.roll(0, None, 0))
    lost = Call(Txn(crashed), 0)
    engine.rollout.step(lost, None)
    assert lost.txn.changes()  # it did work that is now lost
    del lost
    crashed.close()
    crashed = RocksStore(tmp_path / "crashed")
    got += roll(Engine(B, crashed))
    assert ids(got) == ids(want)
    assert len(got) == len(want)  # nothing emitted twice from committed batches
    assert state(crashed) == state(straight)
    straight.close()
    crashed.close()


def test_the_end_of_a_replay_of_several_processes_rolls_out_before_the_last_timers() -> None:
    store = MemoryStore()
    engine, feed = Engine(A, store, role="profile"), Feed(A)
    looks = [feed("web", ev("l1", "look", 0, "d2")), feed("web", ev("l2", "look", MIN, "d2"))]
    engine.process_commands(
        0, [Routed(1, D2, (D2,), 0, looks[0]), Routed(2, D2, (), MIN, looks[1])], 0
    )
    engine = Engine(B, store, role="profile")
    shard = int(next(iter(store.scan(b"p/")))[0].split(b"/")[1])
    assert engine.rolling(shard)
    out = audience(engine.process_commands(0, [Tick(3, shard, 2 * H)], 0))
    # Entered by the rollout at the state's event time, then the timer of the added window.
    assert [(c.segment_id, c.status, c.reason, c.event_time_ms) for c in out] == [
        ("looks", "entered", "definition", MIN),
        ("looks", "exited", "timer", H),
    ]
    assert not engine.rolling(shard)


def test_a_routed_record_on_a_stale_profile_applies_after_the_upgrade() -> None:
    store = MemoryStore()
    engine, feed = Engine(A, store, role="profile"), Feed(A)
    carts = [feed("web", ev(f"c{n}", "cart", n * MIN, "d1")) for n in range(3)]
    engine.process_commands(
        0, [Routed(1, D1, (D1,), 0, carts[0]), Routed(2, D1, (), MIN, carts[1])], 0
    )
    engine = Engine(B, store, role="profile")
    out = audience(engine.process_commands(0, [Routed(3, D1, (), 2 * MIN, carts[2])], 0))
    assert [(c.segment_id, c.status, c.reason) for c in out] == [("carts", "entered", "definition")]
    assert profile(store, D1)["aggs"][input_key(engine, "carts")] == 3


def test_an_adopt_shipped_under_the_old_definitions_counts_the_moved_events() -> None:
    """Several processes, restarted with B while a profile that merged away under A is still on
    the feedback topic: its carts (no rule of A read them, so its `aggs` lack them) travel in
    its history and must count for the survivor's `carts` like every other event."""
    store = MemoryStore()
    engine, feed = Engine(A, store, role="profile"), Feed(A)
    carts = [feed("web", ev(f"c{n}", "cart", n * MIN, "d1")) for n in range(2)]
    engine.process_commands(
        0, [Routed(1, D1, (D1,), 0, carts[0]), Routed(2, D1, (), MIN, carts[1])], 0
    )
    out = engine.process_commands(0, [Move(3, D1, A_ID, (A_ID, D1), "m1", 2 * MIN, MIN)], 0)
    (adopt,) = [o for o in out if isinstance(o, Adopt)]
    engine = Engine(B, store, role="profile")
    merged = audience(engine.process_commands(1, [adopt], 0))
    assert [(c.segment_id, c.status, c.reason) for c in merged] == [("carts", "entered", "merge")]
    assert profile(store, A_ID)["aggs"][input_key(engine, "carts")] == 2
