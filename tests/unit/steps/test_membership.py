"""operators.steps.membership alone (with the profiles and timers it writes through): records
applied to a profile, transitions, timers firing, exits, consent."""

from __future__ import annotations

from operators.identity import Cluster, profile_id
from operators.segments import change_id
from operators.steps.call import Call
from operators.steps.profiles import profile_key
from operators.steps.timers import PREFIX as TIMERS
from operators.steps.timers import timer_key
from operators.store import Txn
from schemas.records import Identity, Record
from tests.unit.steps.helpers import (
    MIN,
    Feed,
    H,
    Steps,
    audience,
    build,
    changes,
    crm,
    ev,
    new_call,
    settings,
)

CONF = settings()
D1: Identity = ("ECID", "d1")
A: Identity = ("Email", "a@x.com")


def apply(steps: Steps, call: Call, record: Record, *, duplicate: bool | None = None) -> None:
    """What the engine does around the step: event time first, then the record applied."""
    canonical = record.identities[0]
    if record.ts_ms is not None and not steps.positions.live:
        steps.positions.move_to(record.ts_ms)
    profile, fresh = steps.profiles.load(call.txn, canonical)
    if duplicate is None:
        duplicate = record.kind == "event" and steps.profiles.duplicate(call.txn, record)
    at_ms = record.ts_ms if record.ts_ms is not None else steps.positions.now_ms
    steps.membership.apply_record(
        call,
        record,
        canonical,
        cluster=Cluster(record.identities),
        profile=profile,
        fresh=fresh,
        merged=False,
        duplicate=duplicate,
        at_ms=at_ms,
    )


def run(steps: Steps, *records: Record, wall_ms: int = 0) -> Call:
    call = new_call(steps.store, wall_ms)
    for record in records:
        apply(steps, call, record)
    call.txn.commit()
    return call


def timer_keys(steps: Steps) -> list[bytes]:
    return [k for k, _ in steps.store.scan(TIMERS)]


def test_an_event_enters_with_its_id_as_reason() -> None:
    steps, feed = build(CONF), Feed(CONF)
    call = run(steps, feed("web", ev("e1", "buy", 1_000, "d1")), wall_ms=77)
    # A new profile also meets the rules that hold for an empty profile.
    assert changes(call.out) == [
        ("buyers", "entered", "event:e1"),
        ("no-tier", "entered", "event:e1"),
    ]
    buyers = audience(call.out)[0]
    assert buyers.profile_id == profile_id(D1) and buyers.identities == {"ECID": ["d1"]}
    assert (buyers.event_time_ms, buyers.emitted_at_ms, buyers.sequence) == (1_000, 77, 1)
    assert buyers.id == change_id(profile_id(D1), "buyers", 1)
    assert steps.published.changes == {("buyers", "entered"): 1, ("no-tier", "entered"): 1}
    stored = steps.profiles.get(Txn(steps.store), D1)
    assert stored is not None and stored["segs"]["buyers"] == [True, 1_000, 1]


def test_only_a_change_of_membership_is_emitted() -> None:
    steps, feed = build(CONF), Feed(CONF)
    run(steps, feed("web", ev("e1", "buy", 1_000, "d1")))
    again = run(
        steps, feed("web", ev("e2", "buy", 2_000, "d1")), feed("web", ev("e3", "x", 3, "d1"))
    )
    assert again.out == []


def test_a_profile_record_enters_with_its_position_as_reason() -> None:
    steps, feed = build(CONF), Feed(CONF)
    row = feed("crm", crm("a@x.com", tier="vip"))
    call = run(steps, row)
    # The tier is set: `no-tier`, true for an empty profile, is not entered on the way.
    assert changes(call.out) == [("vip", "entered", f"profile:{row.origin.position}")]
    call = run(steps, feed("crm", crm("a@x.com", tier="gold")))
    assert [(c.segment_id, c.status, c.sequence) for c in audience(call.out)] == [
        ("vip", "exited", 2)
    ]


def test_a_duplicate_event_changes_nothing_on_a_known_profile() -> None:
    steps, feed = build(CONF), Feed(CONF)
    run(steps, feed("web", ev("e0", "view", 1_000, "d1")))
    call = new_call(steps.store)
    apply(steps, call, feed("web", ev("e1", "buy", 2_000, "d1")), duplicate=True)
    assert call.out == []
    stored = steps.profiles.get(call.txn, D1)
    assert stored is not None and "buyers" not in stored["segs"]


def test_a_duplicate_event_on_a_new_profile_emits_no_change_without_a_reason() -> None:
    steps, feed = build(CONF), Feed(CONF)
    run(steps, feed("web", ev("e1", "view", 1_000, "d1")))
    call = run(steps, feed("web", ev("e1", "view", 1_000, "d9")))  # same _id, someone new
    assert all(c.reason for c in audience(call.out))


def test_a_windowed_rule_sets_the_timer_and_it_fires_at_the_exact_time() -> None:
    steps, feed = build(CONF), Feed(CONF)
    call = run(
        steps, feed("web", ev("v1", "view", 0, "d1")), feed("web", ev("v2", "view", 10 * MIN, "d1"))
    )
    assert ("busy", "entered", "event:v2") in changes(call.out)
    stored = steps.profiles.get(Txn(steps.store), D1)
    assert stored is not None and stored["timer"] == H  # v1 leaves the hour at 1h
    assert timer_keys(steps) == [timer_key(H, D1)]
    early = new_call(steps.store)
    steps.membership.fire_timers(early, H - 1)
    assert early.out == [] and steps.stats.timers_fired == 0
    late = new_call(steps.store, wall_ms=5)
    steps.positions.move_to(3 * H)
    steps.membership.fire_timers(late, 3 * H)
    late.txn.commit()
    (exit_,) = audience(late.out)
    assert (exit_.segment_id, exit_.status, exit_.reason) == ("busy", "exited", "timer")
    assert (exit_.event_time_ms, exit_.sequence, exit_.read_ns) == (H, 2, 0)
    assert steps.stats.timers_fired == 1
    assert timer_keys(steps) == []
    stored = steps.profiles.get(Txn(steps.store), D1)
    assert stored is not None and stored["timer"] is None and stored["segs"]["busy"][0] is False


def test_fire_timers_skips_superseded_heap_entries() -> None:
    steps, feed = build(CONF), Feed(CONF)
    views = [ev("v1", "view", 0, "d1"), ev("v2", "view", 10 * MIN, "d1")]
    run(steps, *(feed("web", body) for body in views))
    # A third view: at 1h two remain, so the exit moves to 1h10 (v2 leaves).
    run(steps, feed("web", ev("v3", "view", 30 * MIN, "d1")))
    assert timer_keys(steps) == [timer_key(H + 10 * MIN, D1)]
    assert steps.timers.next_ms() == H  # the old entry is still on the heap
    call = new_call(steps.store)
    steps.membership.fire_timers(call, 3 * H)
    assert [(c.segment_id, c.status, c.event_time_ms) for c in audience(call.out)] == [
        ("busy", "exited", H + 10 * MIN)
    ]
    assert steps.stats.timers_fired == 1


def test_a_timer_of_a_profile_that_is_gone_does_nothing() -> None:
    steps, feed = build(CONF), Feed(CONF)
    views = [ev("v1", "view", 0, "d1"), ev("v2", "view", 10 * MIN, "d1")]
    run(steps, *(feed("web", body) for body in views))
    txn = Txn(steps.store)
    steps.profiles.delete(txn, D1)  # merged away by another key, say
    txn.commit()
    call = new_call(steps.store)
    steps.membership.fire_timers(call, 3 * H)
    assert call.out == [] and steps.stats.timers_fired == 0


def test_remove_exits_every_membership_and_deletes_profile_and_timer() -> None:
    steps, feed = build(CONF), Feed(CONF)
    views = [ev("v1", "buy", 0, "d1"), ev("v2", "view", 1, "d1"), ev("v3", "view", 2, "d1")]
    run(steps, *(feed("web", body) for body in views))
    assert timer_keys(steps) != []
    call = new_call(steps.store)
    profile = steps.profiles.get(call.txn, D1)
    assert profile is not None
    cluster = Cluster((A, D1))
    steps.membership.remove(call, D1, cluster, profile, reason="merge", at_ms=42)
    call.txn.commit()
    assert sorted(changes(call.out)) == [
        ("busy", "exited", "merge"),
        ("buyers", "exited", "merge"),
        ("no-tier", "exited", "merge"),
    ]
    assert {(c.event_time_ms, c.sequence) for c in audience(call.out)} == {(42, 2)}
    assert audience(call.out)[0].identities == {"Email": ["a@x.com"], "ECID": ["d1"]}
    assert steps.store.get(profile_key(D1, CONF.shards)) is None
    assert timer_keys(steps) == []


def test_a_merged_profile_is_evaluated_against_every_rule() -> None:
    steps, feed = build(CONF), Feed(CONF)
    run(steps, feed("crm", crm("a@x.com", tier="vip")))
    call = new_call(steps.store)
    profile = steps.profiles.get(call.txn, A)
    assert profile is not None
    profile = {**profile, "segs": {}}  # as if memberships came from a merge not yet evaluated
    steps.membership.apply_record(
        call,
        feed("web", ev("e1", "x", 5, None, "a@x.com")),
        A,
        cluster=None,
        profile=profile,
        fresh=False,
        merged=True,
        duplicate=False,
        at_ms=5,
    )
    assert changes(call.out) == [("vip", "entered", "merge")]


def test_consent_denied_profiles_are_flagged_on_their_changes() -> None:
    steps, feed = build(CONF), Feed(CONF)
    no = run(steps, feed("crm", crm("a@x.com", tier="vip", consents={"marketing": {"val": "N"}})))
    yes = run(steps, feed("crm", crm("b@x.com", tier="vip", consents={"marketing": {"val": "y"}})))
    unsaid = run(steps, feed("crm", crm("c@x.com", tier="vip")))
    assert [c.consent_denied for c in audience(no.out)] == [True]
    assert [c.consent_denied for c in audience(yes.out)] == [False]
    assert [c.consent_denied for c in audience(unsaid.out)] == [False]


def test_live_an_event_ahead_of_the_wall_clock_is_evaluated_at_its_own_time() -> None:
    steps, feed = build(CONF, live=True), Feed(CONF)
    steps.positions.move_to(10 * MIN)
    call = run(
        steps,
        feed("web", ev("v1", "view", 9 * MIN, "d1")),
        feed("web", ev("v2", "view", 11 * MIN, "d1")),
    )
    busy = [c for c in audience(call.out) if c.segment_id == "busy"]
    assert [(c.status, c.event_time_ms) for c in busy] == [("entered", 11 * MIN)]
