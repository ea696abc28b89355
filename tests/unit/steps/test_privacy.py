"""operators.steps.privacy alone (with the steps a delete goes through): tombstones, consent,
and the GDPR delete of a whole cluster."""

from __future__ import annotations

from operators import profile as prof
from operators.steps.call import Call
from operators.steps.graph import pointer_key
from operators.steps.privacy import Consent, tombstone_key
from operators.steps.profiles import profile_key
from operators.store import decode
from schemas.records import Identity, Record
from tests.unit.steps.helpers import (
    Feed,
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
SHARDS = CONF.shards
A: Identity = ("Email", "a@x.com")
D1: Identity = ("ECID", "d1")
GRANT = {"marketing": {"val": "YES"}}


def ingest(steps: Steps, *records: Record, wall_ms: int = 0) -> Call:
    """One engine call of one process: the tombstone check, link, apply, the outbox, commit."""
    call = new_call(steps.store, wall_ms)
    for record in records:
        if steps.privacy.forgotten(call.txn, record):
            continue
        resolution, losers = steps.graph.link(call.txn, record)
        assert losers == []  # these tests merge no profiles
        profile, fresh = steps.profiles.load(call.txn, resolution.canonical)
        steps.membership.apply_record(
            call,
            record,
            resolution.canonical,
            cluster=resolution.cluster,
            profile=profile,
            fresh=fresh,
            merged=False,
            duplicate=False,
            at_ms=record.ts_ms or 0,
        )
    steps.outbox.append(call.txn, 0, call.out)
    call.txn.commit()
    return call


def forget(steps: Steps, identity: Identity, *, wall_ms: int = 0, at_ms: int = 0) -> Call:
    call = new_call(steps.store, wall_ms)
    assert steps.privacy.forget(call, identity, at_ms)
    steps.outbox.append(call.txn, 0, call.out)
    call.txn.commit()
    return call


def tombstone(steps: Steps, identity: Identity) -> object:
    raw = steps.store.get(tombstone_key(identity))
    return None if raw is None else decode(raw)


def test_forget_deletes_the_cluster_and_tombstones_every_member() -> None:
    steps, feed = build(CONF), Feed(CONF)
    ingest(steps, feed("web", ev("e1", "buy", 1_000, "d1", "a@x.com")))
    call = new_call(steps.store, wall_ms=99)
    assert steps.privacy.forget(call, D1, 5_000)
    call.txn.commit()
    assert sorted(changes(call.out)) == [
        ("buyers", "exited", "delete"),
        ("no-tier", "exited", "delete"),
    ]
    (first, _) = audience(call.out)
    assert first.event_time_ms == 5_000 and first.identities == {
        "Email": ["a@x.com"],
        "ECID": ["d1"],
    }
    assert tombstone(steps, A) == {"deleted_at_ms": 99} and tombstone(steps, D1) is not None
    for key in (profile_key(A, SHARDS), pointer_key(A, SHARDS), pointer_key(D1, SHARDS)):
        assert steps.store.get(key) is None
    assert steps.stats.deleted == 1
    assert [k for k, _ in steps.store.scan(b"t/")] == []


def test_records_of_a_forgotten_person_are_dropped_until_one_grants_consent() -> None:
    steps, feed = build(CONF), Feed(CONF)
    ingest(steps, feed("crm", crm("a@x.com", tier="vip")))
    forget(steps, A)
    dropped = ingest(steps, feed("crm", crm("a@x.com", tier="vip")))
    assert dropped.out == [] and steps.stats.forgotten == 1
    assert steps.store.get(profile_key(A, SHARDS)) is None  # not even an empty profile
    back = ingest(steps, feed("crm", crm("a@x.com", tier="vip", consents=GRANT)))
    assert ("vip", "entered") in [(c.segment_id, c.status) for c in audience(back.out)]
    assert tombstone(steps, A) is None
    again = ingest(steps, feed("crm", crm("a@x.com", tier="gold")))
    assert [(c.segment_id, c.status) for c in audience(again.out)] == [("vip", "exited")]


def test_consent_lifts_only_the_tombstones_of_the_identities_it_names() -> None:
    steps, feed = build(CONF), Feed(CONF)
    ingest(steps, feed("web", ev("e1", "buy", 1_000, "d1", "a@x.com")))
    forget(steps, A)
    ingest(steps, feed("crm", crm("a@x.com", consents=GRANT)))
    assert tombstone(steps, A) is None and tombstone(steps, D1) is not None
    device = ingest(steps, feed("web", ev("e2", "buy", 2_000, "d1")))
    assert device.out == [] and steps.stats.forgotten == 1


def test_a_restarted_worker_still_drops_a_forgotten_persons_records() -> None:
    steps, feed = build(CONF), Feed(CONF)
    ingest(steps, feed("crm", crm("a@x.com", tier="vip")))
    forget(steps, A)
    restarted = build(CONF, steps.store)
    assert ingest(restarted, feed("crm", crm("a@x.com", tier="vip"))).out == []
    assert restarted.stats.forgotten == 1


def test_forget_drops_the_persons_outputs_still_waiting_in_the_outbox() -> None:
    steps, feed = build(CONF), Feed(CONF)
    ingest(steps, feed("web", ev("e1", "buy", 1_000, "d1", "a@x.com")))
    other = ingest(steps, feed("web", ev("e2", "buy", 1_000, "d2")))
    gone = forget(steps, D1)
    waiting = steps.outbox.after(0, 0)
    assert waiting == [*other.out, *gone.out]  # the delete's own exits are sent, not dropped
    assert {c.reason for c in audience(gone.out)} == {"delete"}


def test_forgetting_an_unknown_identity_tombstones_it_and_returns_false() -> None:
    steps, feed = build(CONF), Feed(CONF)
    call = new_call(steps.store, wall_ms=7)
    assert not steps.privacy.forget(call, A, 0)
    call.txn.commit()
    assert call.out == [] and steps.stats.deleted == 0
    assert tombstone(steps, A) == {"deleted_at_ms": 7}
    # The person turns up later (a replay of older data, say): still dropped.
    assert ingest(steps, feed("crm", crm("a@x.com", tier="vip"))).out == []


def test_consent_reads_the_configured_attribute_whatever_the_case() -> None:
    consent = Consent(CONF.privacy)
    feed = Feed(CONF)
    denied = {**prof.new_profile(), "attrs": {"consents.marketing.val": "No"}}
    assert consent.denied(denied)
    assert not consent.denied(prof.new_profile())
    assert consent.granted_by(feed("crm", crm("a@x.com", consents={"marketing": {"val": "True"}})))
    assert not consent.granted_by(feed("crm", crm("a@x.com", consents={"marketing": "y"})))
    assert not consent.granted_by(feed("crm", crm("a@x.com", consents={"marketing": {"val": "n"}})))
