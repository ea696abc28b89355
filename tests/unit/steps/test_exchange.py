"""operators.steps.exchange alone: the identity step's side (`route`, `route_forget`, `ticks`)
and a profile step's side (`command`, `adopt`) of several processes."""

from __future__ import annotations

from operators import profile as prof
from operators.steps.call import Call, Output
from operators.steps.exchange import GRAPH_KEY, forward_key
from operators.steps.privacy import tombstone_key
from operators.steps.profiles import profile_key
from operators.store import Txn
from schemas.records import (
    Adopt,
    Command,
    Drop,
    Forget,
    Identity,
    Move,
    Origin,
    Record,
    Routed,
    Tick,
)
from tests.unit.steps.helpers import MIN, Feed, H, Steps, audience, build, changes, ev, new_call
from tests.unit.steps.helpers import settings as make_settings

CONF = make_settings()
A: Identity = ("Email", "a@x.com")
B: Identity = ("Email", "b@x.com")
D1: Identity = ("ECID", "d1")
D2: Identity = ("ECID", "d2")


def route(steps: Steps, *items: Record | Forget, wall_ms: int = 0) -> list[Output]:
    """What the engine's identity step does around the exchange, in one call."""
    call = new_call(steps.store, wall_ms)
    for item in items:
        if isinstance(item, Forget):
            steps.exchange.route_forget(call, item)
            continue
        part, at_record, _ = steps.positions.observe(item)
        steps.positions.advance(part, at_record)
        origin = item.origin
        if steps.positions.first_time(
            call.txn, GRAPH_KEY, origin.source, origin.partition, origin.offset
        ):
            steps.exchange.route(call, item, *steps.graph.link(call.txn, item))
    steps.outbox.append(call.txn, GRAPH_KEY, call.out)
    call.txn.commit()
    return call.out


def apply(steps: Steps, *items: Command, key: int = 0, wall_ms: int = 0) -> Call:
    """What a profile step does: each command, then the outbox and one commit."""
    call = new_call(steps.store, wall_ms)
    for item in items:
        if isinstance(item, Adopt):
            steps.exchange.adopt(call, key, item)
        else:
            steps.exchange.command(call, key, item)
    steps.outbox.append(call.txn, key, call.out)
    call.txn.commit()
    return call


def profile(steps: Steps, canonical: Identity) -> prof.Profile | None:
    return steps.profiles.get(Txn(steps.store), canonical)


# -- the identity step ------------------------------------------------------------------------


def test_route_sends_each_record_to_its_cluster_with_the_graphs_event_time() -> None:
    steps, feed = build(CONF, role="graph"), Feed(CONF)
    first = feed("web", ev("e1", "view", 1_000, "d1"))
    second = feed("web", ev("e2", "view", 2_000, "d1"))
    assert route(steps, first) == [Routed(1, D1, (D1,), 1_000, first)]
    # The cluster did not change: its members do not travel again.
    assert route(steps, second) == [Routed(2, D1, (), 2_000, second)]
    assert route(steps, second) == []  # re-delivered: the offset check


def test_route_moves_the_losers_of_a_merge_before_the_record() -> None:
    steps, feed = build(CONF, role="graph"), Feed(CONF)
    route(steps, feed("web", ev("e1", "view", 1_000, "d1")), feed("crm", {"email": "a@x.com"}))
    login = feed("web", ev("e2", "login", 2_000, "d1", "a@x.com"))
    out = route(steps, login)
    (move, routed) = out
    assert isinstance(move, Move) and isinstance(routed, Routed)
    assert (move.seq, move.loser, move.survivor, move.members) == (3, D1, A, (A, D1))
    # The graph's event time includes the record (profile rows carry none: they hold nothing back).
    assert (move.at_ms, move.event_ms) == (2_000, 2_000)
    assert (routed.seq, routed.canonical, routed.members, routed.record) == (4, A, (A, D1), login)
    assert steps.outbox.seq(GRAPH_KEY) == 4


def test_a_duplicate_event_is_linked_but_not_routed() -> None:
    steps, feed = build(CONF, role="graph"), Feed(CONF)
    route(steps, feed("web", ev("e1", "view", 1_000, "d1")), feed("web", ev("e2", "v", 1, "d2")))
    out = route(steps, feed("web", ev("e1", "view", 1_000, "d2", "a@x.com")))
    assert [type(o).__name__ for o in out] == ["Move"]  # the graph still merged d2 in
    assert steps.stats.duplicates == 1


def test_route_forget_drops_once_per_command_and_tombstones() -> None:
    steps, feed = build(CONF, role="graph"), Feed(CONF)
    route(steps, feed("web", ev("e1", "view", 5_000, "d1", "a@x.com")))
    forget = Forget(Origin("privacy", 0, 1), D1)
    assert route(steps, forget, wall_ms=9) == [Drop(2, A, (A, D1), 5_000)]
    assert route(steps, forget) == []  # re-delivered: the offset check
    assert steps.store.get(tombstone_key(A)) is not None
    unknown = Forget(Origin("privacy", 0, 2), B)
    assert route(steps, unknown) == []
    assert steps.store.get(tombstone_key(B)) is not None


def test_ticks_give_every_shard_the_last_event_time() -> None:
    steps = build(CONF, role="graph")
    call = new_call(steps.store)
    steps.exchange.ticks(call, 7_000, 3)
    assert call.out == [Tick(1, 0, 7_000), Tick(2, 1, 7_000), Tick(3, 2, 7_000)]


# -- a profile step ---------------------------------------------------------------------------


def test_routed_records_apply_once_at_the_graphs_event_time() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    rec = feed("web", ev("e1", "buy", 1_000, "d1"))
    call = apply(steps, Routed(1, D1, (D1,), 4_000, rec))
    assert changes(call.out) == [
        ("buyers", "entered", "event:e1"),
        ("no-tier", "entered", "event:e1"),
    ]
    assert steps.positions.max_event_ms == 4_000
    stored = profile(steps, D1)
    assert stored is not None and stored["ids"] == [["ECID", "d1"]]
    assert apply(steps, Routed(1, D1, (D1,), 4_000, rec)).out == []  # same sequence again
    assert steps.counts.graph_done == 2 and steps.stats.records == 1


def test_the_graphs_event_time_fires_timers_due_before_the_record() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    v1, v2 = (feed("web", ev(f"v{n}", "view", n * 10 * MIN, "d1")) for n in (0, 1))
    apply(steps, Routed(1, D1, (D1,), 0, v1), Routed(2, D1, (), 10 * MIN, v2))
    other = feed("web", ev("o1", "buy", 3 * H, "d2"))
    out = audience(apply(steps, Routed(3, D2, (D2,), 3 * H, other)).out)
    first = out[0]
    assert (first.segment_id, first.status, first.reason, first.event_time_ms) == (
        "busy",
        "exited",
        "timer",
        H,
    )
    assert first.identities == {"ECID": ["d1"]}


def test_a_tick_fires_the_timers_due() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    v1, v2 = (feed("web", ev(f"v{n}", "view", n * MIN, "d1")) for n in (0, 1))
    apply(steps, Routed(1, D1, (D1,), 0, v1), Routed(2, D1, (), MIN, v2))
    assert changes(apply(steps, Tick(3, 0, 2 * H)).out) == [("busy", "exited", "timer")]


def test_a_move_exits_the_loser_ships_it_and_leaves_a_forward_pointer() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    v1, v2 = (feed("web", ev(f"v{n}", "view", n * MIN, "d1")) for n in (0, 1))
    apply(steps, Routed(1, D1, (D1,), 0, v1), Routed(2, D1, (), MIN, v2))
    loser = profile(steps, D1)
    assert loser is not None and loser["timer"] == H
    call = apply(steps, Move(3, D1, A, (A, D1), "m1", 2 * MIN, MIN))
    assert sorted(changes(call.out)) == [
        ("busy", "exited", "merge"),
        ("no-tier", "exited", "merge"),
    ]
    assert audience(call.out)[0].identities == {"ECID": ["d1"]}  # who the loser was
    (adopt,) = [o for o in call.out if isinstance(o, Adopt)]
    assert (adopt.survivor, adopt.members, adopt.merge_id) == (A, (A, D1), "m1")
    assert adopt.at_ms == 2 * MIN and adopt.origin is None
    # Shipped whole with its kept events, but its timer stays behind: the survivor sets its own.
    shipped = dict(adopt.profile)
    assert [(ts, eid) for ts, eid, _ in shipped.pop("history")] == [(0, "v0"), (MIN, "v1")]
    assert shipped == {**loser, "timer": None}
    assert [k for k, _ in steps.store.scan(b"t/")] == []
    assert [k for k, _ in steps.store.scan(b"h/")] == []  # the events left with it
    assert steps.store.get(forward_key(D1)) == b'"Email:a@x.com"'
    assert steps.store.get(profile_key(D1, CONF.shards)) is None
    assert steps.counts.fb_out == 1
    # A move of a profile this step never held leaves the pointer only.
    assert apply(steps, Move(4, D2, A, (A, D2), "m2", 2 * MIN, MIN)).out == []
    assert steps.store.get(forward_key(D2)) is not None and steps.counts.fb_out == 1


def test_adopt_merges_once_per_merge_id() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    apply(steps, Routed(1, D1, (D1,), 1_000, feed("web", ev("e1", "buy", 1_000, "d1"))))
    shipped = apply(steps, Move(2, D1, A, (A, D1), "m1", 2_000, 1_500)).out[-1]
    assert isinstance(shipped, Adopt)
    call = apply(steps, shipped, key=1)
    assert sorted(changes(call.out)) == [
        ("buyers", "entered", "merge"),
        ("no-tier", "entered", "merge"),
    ]
    assert audience(call.out)[0].identities == {"Email": ["a@x.com"], "ECID": ["d1"]}
    stored = profile(steps, A)
    assert stored is not None and stored["ids"] == [["Email", "a@x.com"], ["ECID", "d1"]]
    assert apply(steps, shipped, key=1).out == []  # a second copy (a crash re-sent it)
    assert steps.counts.fb_done == 1


def test_adopt_checks_its_feedback_offset() -> None:
    steps = build(CONF, role="profile")
    first = Adopt(A, (A, D1), "m1", prof.new_profile(), 0, Origin("$feedback", 0, 5))
    again = Adopt(A, (A, D2), "m2", prof.new_profile(), 0, Origin("$feedback", 0, 5))
    apply(steps, first)
    apply(steps, again)  # the same feedback offset: already applied
    stored = profile(steps, A)
    assert stored is not None and stored["ids"] == [["Email", "a@x.com"], ["ECID", "d1"]]


def test_adopt_follows_a_forward_pointer_once() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    apply(steps, Routed(1, A, (A,), 1_000, feed("crm", {"email": "a@x.com"})))
    apply(steps, Move(2, A, B, (B, A), "m-ab", 2_000, 2_000))  # A itself merged into B
    late = Adopt(A, (A, D1), "m-d1", {**prof.new_profile(), "attrs": {"tier": "vip"}}, 1_500)
    call = apply(steps, late)
    assert call.out == [Adopt(B, (A, D1), "m-d1", late.profile, 1_500)]
    assert profile(steps, A) is None  # nothing is merged into a profile that left
    assert apply(steps, late).out == []
    assert (steps.counts.fb_out, steps.counts.fb_done) == (2, 1)


def test_a_drop_deletes_the_profile_and_exits_with_reason_delete() -> None:
    steps, feed = build(CONF, role="profile"), Feed(CONF)
    apply(steps, Routed(1, A, (A, D1), 1_000, feed("web", ev("e1", "buy", 1_000, "d1", "a@x.com"))))
    call = apply(steps, Drop(2, A, (A, D1), 3_000))
    assert {(c.segment_id, c.status, c.reason, c.event_time_ms) for c in audience(call.out)} == {
        ("buyers", "exited", "delete", 3_000),
        ("no-tier", "exited", "delete", 3_000),
    }
    assert profile(steps, A) is None
    # The entries from before the delete are gone from the outbox; the exits remain.
    assert steps.outbox.after(0, 0) == call.out


def test_live_the_graphs_event_time_moves_nothing() -> None:
    steps, feed = build(CONF, role="profile", live=True), Feed(CONF)
    apply(steps, Routed(1, D1, (D1,), 9 * H, feed("web", ev("e1", "buy", 1_000, "d1"))))
    assert steps.positions.max_event_ms is None  # live, the wall clock moves event time
