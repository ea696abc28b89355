"""operators.steps.history: each profile's raw events, kept under `h/` with the decoded body,
deduplicated by `_id`, moved on merges (in one process, and between processes in the `Adopt`),
dropped by a GDPR delete, and trimmed by `profile.history` (max_events, max_age) in amortised
steps that never change what `view()` shows. Driven through the engine of one process (which
wires the history into the record path) and the exchange of several processes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from operators import profile as prof
from operators.engine import Engine
from operators.steps.call import Call
from operators.steps.history import META_KEY, entry_time, history_prefix
from operators.store import MemoryStore, RocksStore, Store, Txn
from schemas.records import Adopt, Command, Drop, Identity, Move, Record, Routed
from tests.unit.steps.helpers import CONFIG, MIN, Feed, H, Steps, build, changes, ev, new_call
from tests.unit.steps.helpers import settings as make_settings

A: Identity = ("Email", "a@x.com")
D1: Identity = ("ECID", "d1")
D2: Identity = ("ECID", "d2")


def conf(max_events: int = 5000, max_age: str = "90d") -> Any:
    return make_settings(
        CONFIG + f"profile: {{history: {{max_events: {max_events}, max_age: {max_age}}}}}\n"
    )


CONF = conf()


def kept(store: Store, canonical: Identity) -> list[tuple[int, str, dict[str, Any]]]:
    """What the store holds for a profile: (time, event id, body), in key order."""
    prefix = history_prefix(canonical, CONF.shards)
    out = []
    for key, raw in store.scan(prefix):
        event_id = key[len(prefix) + 14 :].decode()
        out.append((entry_time(prefix, key), event_id, orjson.loads(raw)))
    return out


def stored(engine: Engine | Steps, canonical: Identity) -> prof.Profile:
    found = engine.profiles.get(Txn(engine.store), canonical)
    assert found is not None
    return found


def newest(
    events: list[tuple[int, str]], now_ms: int, max_events: int, max_age_ms: int
) -> list[tuple[int, str]]:
    """The view as DESIGN §13 defines it, from every event ever added: the newest `max_events`
    with a time in (now - max_age, now]... and later (a future event is kept too)."""
    inside = sorted(e for e in events if e[0] > now_ms - max_age_ms)
    return inside[max(0, len(inside) - max_events) :]


def viewed(engine: Engine, canonical: Identity) -> list[tuple[int, str]]:
    view = engine.history.view(engine.store, canonical, stored(engine, canonical), engine.now_ms)
    return [(ts, body["_id"]) for ts, body in view.events]


# -- the record path (one process) ------------------------------------------------------------


def test_events_are_kept_per_profile_with_the_decoded_body() -> None:
    engine, feed = Engine(CONF, MemoryStore()), Feed(CONF)
    e1 = feed("web", ev("e1", "view", 1_000, "d1"))
    e2 = feed("web", ev("e2", "buy", 3_000, "d2"))
    e3 = feed("web", ev("e3", "buy", 2_000, "d1"))
    engine.process(0, [e1, e2, e3], 0)
    # Time order per profile (not arrival order), the body as the rules see it.
    assert kept(engine.store, D1) == [(1_000, "e1", e1.body), (2_000, "e3", e3.body)]
    assert kept(engine.store, D2) == [(3_000, "e2", e2.body)]
    assert stored(engine, D1)["hist"] == [2, 1_000]
    # A profile record is not an event: nothing is kept for it.
    engine.process(0, [feed("crm", {"email": "a@x.com", "tier": "vip"})], 0)
    assert kept(engine.store, A) == []
    assert "hist" not in stored(engine, A)


def test_a_duplicate_event_is_not_kept_twice() -> None:
    engine, feed = Engine(CONF, MemoryStore()), Feed(CONF)
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    # The same `_id` again (a producer's retry: a new offset), alone and in a batch.
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    engine.process(
        0,
        [feed("web", ev("e2", "view", 2_000, "d1")), feed("web", ev("e2", "view", 2_000, "d1"))],
        0,
    )
    assert [(ts, eid) for ts, eid, _ in kept(engine.store, D1)] == [(1_000, "e1"), (2_000, "e2")]
    assert stored(engine, D1)["hist"] == [2, 1_000]
    assert engine.stats.duplicates == 2


def test_a_merge_moves_the_losers_events_to_the_survivor() -> None:
    engine, feed = Engine(CONF, MemoryStore()), Feed(CONF)
    d1 = [feed("web", ev("e1", "view", 1_000, "d1")), feed("web", ev("e2", "buy", 2_000, "d1"))]
    crm = feed("crm", {"email": "a@x.com", "tier": "vip"})
    mine = feed("web", ev("e3", "view", 3_000, None, "a@x.com"))
    engine.process(0, [*d1, crm, mine], 0)
    login = feed("web", ev("e4", "login", 4_000, "d1", "a@x.com"))
    engine.process(0, [login], 0)
    assert kept(engine.store, D1) == []
    assert [(ts, eid) for ts, eid, _ in kept(engine.store, A)] == [
        (1_000, "e1"),
        (2_000, "e2"),
        (3_000, "e3"),
        (4_000, "e4"),
    ]
    assert kept(engine.store, A)[1][2] == d1[1].body
    assert stored(engine, A)["hist"] == [4, 1_000]


def test_a_merge_into_a_new_profile_keeps_the_losers_summary() -> None:
    engine, feed = Engine(CONF, MemoryStore()), Feed(CONF)
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    # The survivor is new: its first record is the one that links.
    engine.process(0, [feed("web", ev("e2", "view", 2_000, "d1", "a@x.com"))], 0)
    assert [eid for _, eid, _ in kept(engine.store, A)] == ["e1", "e2"]
    assert stored(engine, A)["hist"] == [2, 1_000]


def test_a_merge_trims_the_joined_history_to_the_newest() -> None:
    config = conf(max_events=3)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [feed("web", ev(f"d{n}", "view", n * 2 * MIN, "d1")) for n in range(3)], 0)
    engine.process(
        0,
        [feed("web", ev(f"a{n}", "view", (n * 2 + 1) * MIN, None, "a@x.com")) for n in range(3)],
        0,
    )
    engine.process(0, [feed("web", ev("lg", "login", 6 * MIN, "d1", "a@x.com"))], 0)
    assert viewed(engine, A) == [(4 * MIN, "d2"), (5 * MIN, "a2"), (6 * MIN, "lg")]
    held = kept(engine.store, A)
    assert len(held) <= 3 + 1 and stored(engine, A)["hist"] == [len(held), held[0][0]]
    assert view_from(engine, A) is not None  # the older ones are gone


# -- several processes: the events travel in the Adopt ----------------------------------------


def apply(steps: Steps, *items: Command, key: int = 0) -> Call:
    """What a profile step does (as in test_exchange): each command, the outbox, one commit."""
    call = new_call(steps.store)
    for item in items:
        if isinstance(item, Adopt):
            steps.exchange.adopt(call, key, item)
        else:
            steps.exchange.command(call, key, item)
    steps.outbox.append(call.txn, key, call.out)
    call.txn.commit()
    return call


def test_a_move_ships_the_events_and_adopt_keeps_them_under_the_survivor() -> None:
    loser_side, feed = build(CONF, role="profile"), Feed(CONF)
    e1 = feed("web", ev("e1", "view", 1_000, "d1"))
    e2 = feed("web", ev("e2", "buy", 2_000, "d1"))
    apply(loser_side, Routed(1, D1, (D1,), 1_000, e1), Routed(2, D1, (), 2_000, e2))
    out = apply(loser_side, Move(3, D1, A, (A, D1), "m1", 5_000, 2_000)).out
    (adopt,) = [o for o in out if isinstance(o, Adopt)]
    assert adopt.profile["history"] == [[1_000, "e1", e1.body], [2_000, "e2", e2.body]]
    assert adopt.profile["hist"] == [2, 1_000]
    assert [k for k, _ in loser_side.store.scan(b"h/")] == []  # they left this process
    # The survivor lives in another process (another store) and has events of its own.
    survivor_side = build(CONF, role="profile")
    e3 = feed("web", ev("e3", "view", 500, None, "a@x.com"))
    apply(survivor_side, Routed(1, A, (A,), 500, e3), key=1)
    apply(survivor_side, adopt, key=1)
    assert kept(survivor_side.store, A) == [
        (500, "e3", e3.body),
        (1_000, "e1", e1.body),
        (2_000, "e2", e2.body),
    ]
    profile = stored(survivor_side, A)
    assert profile["hist"] == [3, 500]
    assert "history" not in profile  # the shipped events are not part of the document
    apply(survivor_side, adopt, key=1)  # a second copy (re-sent after a crash) adds nothing
    assert len(kept(survivor_side.store, A)) == 3
    assert stored(survivor_side, A)["hist"] == [3, 500]


def test_an_adopt_with_history_off_keeps_nothing() -> None:
    steps = build(conf(max_events=0), role="profile")
    moved = {**prof.new_profile(), "hist": [1, 1_000], "history": [[1_000, "e1", {"_id": "e1"}]]}
    apply(steps, Adopt(A, (A, D1), "m1", moved, 1_000))
    assert [k for k, _ in steps.store.scan(b"h/")] == []


# -- GDPR delete ------------------------------------------------------------------------------


def test_forget_drops_the_kept_events_of_the_whole_cluster() -> None:
    engine, feed = Engine(CONF, MemoryStore()), Feed(CONF)
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1", "a@x.com"))], 0)
    engine.process(0, [feed("web", ev("e2", "view", 2_000, "d2"))], 0)
    assert len(kept(engine.store, A)) == 1
    assert engine.forget(0, D1, 0) is not None  # by any member of the cluster
    assert kept(engine.store, A) == []
    assert len(kept(engine.store, D2)) == 1  # someone else's stay


def test_privacy_forget_drops_them_too() -> None:
    steps, feed = build(CONF), Feed(CONF)
    engine = Engine(CONF, steps.store)  # the record path, then the steps on the same store
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    call = new_call(steps.store)
    assert steps.privacy.forget(call, D1, 1_000)
    call.txn.commit()
    assert kept(steps.store, D1) == []


def test_a_drop_of_several_processes_deletes_the_events() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    apply(steps, Routed(1, A, (A, D1), 1_000, feed("web", ev("e1", "buy", 1_000, "d1", "a@x.com"))))
    assert len(kept(steps.store, A)) == 1
    call = apply(steps, Drop(2, A, (A, D1), 3_000))
    assert ("buyers", "exited", "delete") in changes(call.out)
    assert kept(steps.store, A) == []


# -- retention: the view, and amortised trimming ----------------------------------------------


def test_trimming_by_count_keeps_the_newest() -> None:
    config = conf(max_events=3)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    ids: list[tuple[int, str]] = []
    for n in range(1, 11):
        engine.process(0, [feed("web", ev(f"e{n}", "view", n * MIN, "d1"))], 0)
        ids.append((n * MIN, f"e{n}"))
        assert viewed(engine, D1) == ids[-3:]
        held = kept(engine.store, D1)
        assert len(held) <= 3 + 1  # amortised: at most the slack (max(1, 3 // 10)) over
        assert stored(engine, D1)["hist"] == [len(held), held[0][0]]
    # Everything older than the newest three went, whenever the trim happened.
    assert [eid for _, eid, _ in kept(engine.store, D1)][-3:] == ["e8", "e9", "e10"]


def test_trimming_by_age_drops_events_older_than_now_minus_max_age() -> None:
    config = conf(max_age="1h")
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    ids: list[tuple[int, str]] = []
    for n in range(0, 30):
        ts = n * 10 * MIN
        engine.process(0, [feed("web", ev(f"e{n}", "view", ts, "d1"))], 0)
        ids.append((ts, f"e{n}"))
        assert engine.now_ms == ts
        # (now - 1h, now]: the event exactly 1h old is out.
        assert viewed(engine, D1) == [e for e in ids if e[0] > ts - H]
        held = kept(engine.store, D1)
        assert held[0][0] > ts - H - 6 * MIN - 10 * MIN  # slack 6 min, one step of 10 min
    assert len(kept(engine.store, D1)) < 30


def test_the_view_is_the_newest_max_events_within_max_age_whatever_the_trims() -> None:
    """A random stream of two profiles, with late events and several events per call: after
    every call, the view is what the definition says, computed from every event ever added."""
    config = conf(max_events=12, max_age="2h")
    rng = random.Random(14)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    added: dict[str, list[tuple[int, str]]] = {"d1": [], "d2": []}
    clock = 0
    for n in range(300):
        batch: list[Record] = []
        for k in range(rng.randint(1, 3)):
            clock += rng.choice([0, 1, 2, 5, 20]) * MIN
            ts = max(0, clock - rng.choice([0, 0, 0, 30, 100, 200]) * MIN)  # some are late
            device = rng.choice(["d1", "d2"])
            batch.append(feed("web", ev(f"e{n}-{k}", "view", ts, device)))
            added[device].append((ts, f"e{n}-{k}"))
        engine.process(0, batch, 0)
        for device, events in added.items():
            if not events:
                continue
            who: Identity = ("ECID", device)
            want = newest(events, engine.now_ms, 12, 2 * H)
            assert viewed(engine, who) == want, (n, device)
            held = kept(engine.store, who)
            assert len(held) < 12 + 1 + 1  # at most max(1, 12 // 10) over
            hist = stored(engine, who)["hist"]
            assert hist == ([len(held), held[0][0]] if held else None), (n, device)


def test_the_view_on_rocksdb_across_a_restart(tmp_path: Path) -> None:
    config = conf(max_events=4, max_age="1h")
    path = tmp_path / "state"
    store = RocksStore(path)
    engine, feed = Engine(config, store), Feed(config)
    for n in range(6):
        engine.process(0, [feed("web", ev(f"e{n}", "view", n * 5 * MIN, "d1"))], 0)
    before = viewed(engine, D1)
    store.close()
    again = Engine(config, RocksStore(path))
    assert viewed(again, D1) == before == [(n * 5 * MIN, f"e{n}") for n in range(2, 6)]
    again.store.close()


# -- from_ms: when the view is not the whole history ------------------------------------------


def view_from(engine: Engine, canonical: Identity) -> int | None:
    return engine.history.view(
        engine.store, canonical, stored(engine, canonical), engine.now_ms
    ).from_ms


def test_from_ms_is_none_while_nothing_is_missing() -> None:
    config = conf(max_events=3, max_age="1h")
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    for n in range(3):  # exactly max_events, all inside max_age
        engine.process(0, [feed("web", ev(f"e{n}", "view", n * MIN, "d1"))], 0)
    assert view_from(engine, D1) is None


def test_from_ms_says_when_events_were_trimmed_by_count() -> None:
    config = conf(max_events=3)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    for n in range(1, 6):
        engine.process(0, [feed("web", ev(f"e{n}", "view", n * MIN, "d1"))], 0)
        view = engine.history.view(engine.store, D1, stored(engine, D1), engine.now_ms)
        if n <= 3:
            assert view.from_ms is None
        else:
            # The oldest events are gone: the view is complete only from its first event on
            # (whether the trim has already deleted them from the store or not).
            assert view.from_ms is not None, n
            # (After the newest trimmed event, at the latest just after the first kept one.)
            assert view.events[0][0] - MIN < view.from_ms <= view.events[0][0] + 1, n


def test_from_ms_says_when_events_are_older_than_max_age() -> None:
    config = conf(max_age="1h")
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [feed("web", ev("e0", "view", 0, "d1"))], 0)
    engine.process(0, [feed("web", ev("e1", "view", 40 * MIN, "d1"))], 0)
    assert view_from(engine, D1) is None
    engine.process(0, [feed("web", ev("e2", "view", 90 * MIN, "d1"))], 0)
    assert viewed(engine, D1) == [(40 * MIN, "e1"), (90 * MIN, "e2")]
    assert view_from(engine, D1) == 90 * MIN - H + 1  # complete from now - max_age on


def test_from_ms_says_when_the_state_was_built_before_the_history() -> None:
    """A state built with the history off (or before it existed) keeps events from the
    restart that turned it on (`since`); the view says so."""
    store = MemoryStore()
    off = conf(max_events=0)
    engine, feed = Engine(off, store), Feed(off)
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    assert [k for k, _ in store.scan(b"h/")] == []
    assert orjson.loads(store.get(META_KEY) or b"null") == {"on": False, "since": None}
    on = Engine(CONF, store)  # restarted with the history on
    assert on.history.since == 1_000
    on.process(0, [feed("web", ev("e2", "view", 2_000, "d1"))], 0)
    on.process(0, [feed("web", ev("e3", "view", 3_000, "d2"))], 0)
    assert viewed(on, D1) == [(2_000, "e2")]
    assert view_from(on, D1) == 1_001  # e1 is not there
    assert view_from(on, D2) is None  # a profile born after `since` is complete
    # Kept across another restart (the meta key, not the restart's time).
    assert Engine(CONF, store).history.since == 1_000


def test_a_new_state_keeps_history_from_the_start() -> None:
    store = MemoryStore()
    engine, feed = Engine(CONF, store), Feed(CONF)
    assert engine.history.since is None
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    assert view_from(engine, D1) is None
    assert Engine(CONF, store).history.since is None


def test_a_state_before_the_history_key_existed_counts_as_built_before() -> None:
    store = MemoryStore()
    engine, feed = Engine(CONF, store), Feed(CONF)
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    store.write({META_KEY: None})  # as a state made by an earlier version of the engine
    assert Engine(CONF, store).history.since == 1_000


def test_history_off_keeps_nothing_and_says_the_view_is_incomplete() -> None:
    config = conf(max_events=0)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [feed("web", ev("e1", "view", 1_000, "d1"))], 0)
    assert [k for k, _ in engine.store.scan(b"h/")] == []
    assert viewed(engine, D1) == []
    assert view_from(engine, D1) is not None


def test_from_ms_when_a_trimmed_event_has_the_time_of_the_first_kept() -> None:
    """Two events in the same millisecond, one trimmed by count: the view must not claim to
    be complete at that millisecond (a rule counting both would be evaluated on one)."""
    config = conf(max_events=1)
    engine, feed = Engine(config, MemoryStore()), Feed(config)
    engine.process(0, [feed("web", ev("a", "view", 1_000, "d1"))], 0)
    engine.process(0, [feed("web", ev("b", "view", 1_000, "d1"))], 0)
    assert viewed(engine, D1) == [(1_000, "b")]
    from_ms = view_from(engine, D1)
    assert from_ms is not None and from_ms > 1_000
