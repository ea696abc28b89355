"""The engine on an in-memory store: merges, dedup, offsets, outbox, timers, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import DestinationSettings, Settings, parse_settings
from operators import metrics, queries
from operators.decode import Decoder
from operators.destinations import render
from operators.engine import Engine
from operators.explain import explain
from operators.steps.profiles import profile_key
from operators.store import MemoryStore
from schemas.records import AudienceChange, Origin, Record

CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
segments:
  - {id: buyers, rule: 'exists(event.eventType == "buy")'}
  - {id: vip, rule: 'profile.tier == "vip"'}
  - {id: busy, rule: 'count(event.eventType == "view", within="1h") >= 2'}
  - {id: no-tier, rule: 'profile.tier == null'}
  - {id: vip-looks, rule: 'profile.tier == "vip" and count(event.eventType == "look", within="1h") >= 2'}
"""
H = 3_600_000


@pytest.fixture
def settings() -> Settings:
    return parse_settings(CONFIG, Path("/c.yaml"), {}, {})


class Feed:
    def __init__(self, settings: Settings) -> None:
        self.decoder = Decoder.from_settings(settings)
        self.offset = 0

    def __call__(self, source: str, body: dict[str, Any], offset: int | None = None) -> Record:
        if offset is None:
            self.offset += 1
            offset = self.offset
        rec = self.decoder.decode(Origin(source, 0, offset), orjson.dumps(body))
        assert isinstance(rec, Record), rec
        return rec


def ev(eid: str, kind: str, ts: int, ecid: str, email: str | None = None) -> dict[str, Any]:
    ids: dict[str, Any] = {"ECID": [{"id": ecid}]}
    if email:
        ids["Email"] = [{"id": email}]
    return {"_id": eid, "eventType": kind, "timestamp": ts, "identityMap": ids}


def changes(out: list[AudienceChange]) -> list[tuple[str, str, str]]:
    return [(c.segment_id, c.status, c.reason) for c in out]


def test_new_profile_meets_rules_true_on_empty_profiles(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    out = engine.process(0, [feed("web", ev("e1", "view", 1000, "d1"))], 0)
    assert changes(out) == [("no-tier", "entered", "event:e1")]


def test_login_merges_device_profile_and_moves_memberships(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    first = engine.process(0, [feed("web", ev("e1", "buy", 1000, "d1"))], 0)
    assert ("buyers", "entered", "event:e1") in changes(first)
    out = engine.process(0, [feed("web", ev("e2", "login", 2000, "d1", "A@x.com"))], 0)
    device = [c for c in out if c.identities == {"ECID": ["d1"]}]
    person = [c for c in out if "Email" in c.identities]
    assert {(c.segment_id, c.status, c.reason) for c in device} == {
        ("buyers", "exited", "merge"),
        ("no-tier", "exited", "merge"),
    }
    assert {(c.segment_id, c.status) for c in person} == {
        ("buyers", "entered"),
        ("no-tier", "entered"),
    }
    assert person[0].identities == {"Email": ["a@x.com"], "ECID": ["d1"]}
    assert engine.store.get(profile_key(("ECID", "d1"), settings.shards)) is None


def test_profile_record_attributes_and_dedup_and_offsets(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    crm = feed("crm", {"email": "a@x.com", "tier": "vip"})
    out = engine.process(0, [crm], 0)
    assert ("vip", "entered", f"profile:{crm.origin.position}") in changes(out)
    buy = feed("web", ev("e1", "buy", 1000, "d1", "a@x.com"))
    dup = feed("web", ev("e1", "buy", 1000, "d1", "a@x.com"))  # same _id, new offset
    engine.process(0, [buy, dup], 0)
    assert engine.stats.duplicates == 1
    again = engine.process(0, [crm, buy], 0)  # re-delivered: skipped by offset
    assert again == [] and engine.stats.replayed == 2


def test_outbox_redelivers_what_came_after_a_snapshot(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(7, [feed("web", ev("e1", "buy", 1000, "d1"))], 0)
    snap = engine.outbox_seq(7)
    later = engine.process(7, [feed("web", ev("e2", "buy", 1000, "d2"))], 0)
    assert [c.id for c in engine.outbox_after(7, snap)] == [c.id for c in later]
    engine.prune_outbox(7, snap)
    assert [c.id for c in engine.outbox_after(7, 0)] == [c.id for c in later]


def test_window_exit_by_timer_at_the_exact_time(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(
        0,
        [feed("web", ev("v1", "view", 0, "d1")), feed("web", ev("v2", "view", 10 * 60_000, "d1"))],
        0,
    )
    out = engine.process(0, [feed("web", ev("o1", "view", 3 * H, "other"))], 0)
    exits = [c for c in out if c.segment_id == "busy"]
    assert [(c.status, c.reason, c.event_time_ms) for c in exits] == [("exited", "timer", H)]


def test_window_exit_that_an_attribute_made_possible(settings: Settings) -> None:
    """Two looks 50 minutes apart; the first leaving the window at 1h flips nothing while the
    profile is not vip, so no timer is set there. The profile turns vip and enters: the timer
    must be set again, and it exits at exactly 1h."""
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    looks = [ev("l1", "look", 0, "d1", "a@x.com"), ev("l2", "look", 50 * 60_000, "d1")]
    engine.process(0, [feed("web", body) for body in looks], 0)
    out = engine.process(0, [feed("crm", {"email": "a@x.com", "tier": "vip"})], 0)
    assert ("vip-looks", "entered") in [(c.segment_id, c.status) for c in out]
    out = engine.process(0, [feed("web", ev("o1", "view", 3 * H, "other"))], 0)
    exits = [c for c in out if c.segment_id == "vip-looks"]
    assert [(c.status, c.reason, c.event_time_ms) for c in exits] == [("exited", "timer", H)]


def test_explain_shows_values_and_next_change(settings: Settings) -> None:
    store = MemoryStore()
    engine, feed = Engine(settings, store), Feed(settings)
    engine.process(
        0, [feed("web", ev("v1", "view", 0, "d1")), feed("web", ev("v2", "view", 60_000, "d1"))], 0
    )
    raw = store.get(profile_key(("ECID", "d1"), settings.shards))
    assert raw is not None
    report = explain(orjson.loads(raw), engine.index, "busy", engine.now_ms)
    assert report.member and report.holds_now
    assert report.lines[0][3] == "2 >= 2"
    assert report.next_changes[0][1] == H
    assert report.timer_ms == H  # the first view leaving the hour makes `busy` exit
    assert "IN segment 'busy'" in report.render()
    assert "profile timer: 1970-01-01T01:00:00Z" in report.render()
    with pytest.raises(KeyError):
        explain(orjson.loads(raw), engine.index, "nope", 0)


def test_explain_promises_no_timer_that_is_not_pending(settings: Settings) -> None:
    """A rule that gives another answer than the stored membership, with no timer held (here:
    a segment added to the config after the profile was evaluated), says so instead of
    promising a timer."""
    store = MemoryStore()
    engine, feed = Engine(settings, store), Feed(settings)
    engine.process(0, [feed("web", ev("b1", "buy", 0, "d1"))], 0)
    raw = store.get(profile_key(("ECID", "d1"), settings.shards))
    assert raw is not None
    profile = orjson.loads(raw)
    del profile["segs"]["buyers"]  # as if `buyers` were new to this state
    report = explain(profile, engine.index, "buyers", engine.now_ms)
    assert report.holds_now and not report.member and report.timer_ms is None
    text = report.render()
    assert "no timer is pending" in text and "profile timer: none" in text
    assert "pending timer will" not in text
    due = explain({**profile, "timer": 10}, engine.index, "buyers", 20)
    assert "timer is due and applies it when the worker next runs" in due.render()


def test_tombstone_drops_records_until_consent_returns(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    engine.process(0, [feed("crm", {"email": "a@x.com", "tier": "vip"})], 0)
    out = engine.forget(9, ("Email", "a@x.com"), 5)
    assert out is not None and {(c.segment_id, c.status, c.reason) for c in out} == {
        ("vip", "exited", "delete")
    }
    assert engine.process(0, [feed("crm", {"email": "a@x.com", "tier": "vip"})], 0) == []
    assert engine.stats.forgotten == 1
    back = feed("crm", {"email": "a@x.com", "tier": "vip", "consents": {"marketing": {"val": "y"}}})
    assert ("vip", "entered") in {(c.segment_id, c.status) for c in engine.process(0, [back], 0)}


def test_consent_denied_is_flagged_for_destinations(settings: Settings) -> None:
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    rec = feed("crm", {"email": "b@x.com", "tier": "vip", "consents": {"marketing": {"val": "n"}}})
    (change,) = [c for c in engine.process(0, [rec], 0) if c.segment_id == "vip"]
    assert change.consent_denied
    strict = DestinationSettings(name="ads", kind="file", path=Path("x"), requires_consent=True)
    lenient = DestinationSettings(name="log", kind="file", path=Path("y"))
    assert render(change, strict) is None
    assert render(change, lenient) is not None


def test_blob_user_guard_refuses_and_records_the_link() -> None:
    settings = parse_settings(
        CONFIG.replace("sources:", "identity: {max_devices_per_identity: 3}\nsources:"),
        Path("/c.yaml"),
        {},
        {},
    )
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    refused = metrics.REFUSED.labels("max_devices_per_identity")
    before = refused._value.get()
    logins = [
        feed("web", ev(f"e{n}", "login", 1000 + n, f"d{n}", "shared@x.com")) for n in range(5)
    ]
    engine.process(0, logins, 0)
    report = queries.cluster_report(engine.store, settings.shards, ("Email", "shared@x.com"))
    assert report is not None
    assert report["members"] == {"Email": ["shared@x.com"], "ECID": ["d0", "d1", "d2"]}
    assert [(r["b"], r["rule"]) for r in report["refused"]] == [
        ("ECID:d3", "max_devices_per_identity"),
        ("ECID:d4", "max_devices_per_identity"),
    ]
    assert engine.stats.conflicts == 2
    assert refused._value.get() - before == 2


def test_a_profile_records_message_time_stamps_its_changes_but_never_moves_event_time(
    settings: Settings,
) -> None:
    """A CRM record read from Kafka, written today, before a replay of old events: its change
    is stamped with its message time; event time stays the events' (the views still count in
    their 1h window, no timer fires early), and equal-priority updates are ordered by that
    time, not by partition."""
    engine, feed = Engine(settings, MemoryStore()), Feed(settings)
    today = 1_764_590_400_000

    def crm(partition: int, offset: int, tier: str, written: int) -> Record:
        raw = orjson.dumps({"email": "a@x.com", "tier": tier})
        rec = feed.decoder.decode(Origin("crm", partition, offset), raw, message_ms=written)
        assert isinstance(rec, Record) and rec.ts_ms == written
        return rec

    out = engine.process(0, [crm(0, 5, "vip", today)], 0)
    assert [(c.segment_id, c.status, c.event_time_ms) for c in out if c.segment_id == "vip"] == [
        ("vip", "entered", today)
    ]
    assert engine.inputs.max_event_ms is None  # not dragged to today
    out = engine.process(
        0,
        [feed("web", ev("v1", "view", 0, "d1")), feed("web", ev("v2", "view", 10 * 60_000, "d1"))],
        0,
    )
    assert [(c.segment_id, c.status, c.event_time_ms) for c in out if c.segment_id == "busy"] == [
        ("busy", "entered", 10 * 60_000)
    ]
    # An older update on a higher partition, read later, loses: the later message wins.
    assert engine.process(0, [crm(1, 0, "basic", today - H)], 0) == []
    assert engine.inputs.max_event_ms == 10 * 60_000
    later = engine.process(0, [feed("web", ev("o1", "view", 3 * H, "other"))], 0)
    assert [(c.segment_id, c.status, c.event_time_ms) for c in later if c.reason == "timer"] == [
        ("busy", "exited", H)
    ]
