"""Profile records take their own time (`timestamp_field`), not the order the sources are read
in (issue #14 item 4): the same files replayed with the sources listed in two orders (so read in
two orders, and with 1 and 2 workers) give the same profiles and the same change stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.helpers import by_identity, export, read_jsonl, replay_files

CONFIG = """\
namespaces:
  - {{name: CRMID, unique: true}}
  - {{name: ECID}}
sources:
{sources}
segments:
  - {{id: gold, rule: 'profile.tier == "gold"'}}
  - {{id: mailable, rule: 'profile.email != null'}}
  - {{id: viewed-twice-1h, rule: 'count(event.eventType == "view", within="1h") >= 2'}}
destinations:
  - {{name: out, kind: file, path: changes.jsonl}}
dead_letters: {{kind: file, path: dead.jsonl}}
"""
SOURCES = {
    "crm": "  - {name: crm, kind: profile, path: crm.jsonl, priority: 10,"
    " timestamp_field: meta.updatedAt, identities: {crmId: CRMID}}",
    "loyalty": "  - {name: loyalty, kind: profile, path: loyalty.jsonl, priority: 10,"
    " timestamp_field: updatedAt, identities: {crmId: CRMID}}",
    "web": "  - {name: web, kind: event, path: web.jsonl, identities: {crmId: CRMID}}",
}
DAY = "2026-11-01"
EXPORT_DAY = "2026-11-20"  # the profile files were exported weeks after the events


def crm(person: str, hour: int, **attrs: Any) -> dict[str, Any]:
    return {"crmId": person, "meta": {"updatedAt": f"{EXPORT_DAY}T{hour:02d}:00:00Z"}, **attrs}


def loyalty(person: str, hour: int | None, **attrs: Any) -> dict[str, Any]:
    time = {} if hour is None else {"updatedAt": f"{EXPORT_DAY}T{hour:02d}:00:00Z"}
    return {"crmId": person, **time, **attrs}


def view(n: int, person: str, minute: int) -> dict[str, Any]:
    stamp = f"{DAY}T10:{minute:02d}:00Z" if minute < 60 else f"{DAY}T11:{minute - 60:02d}:00Z"
    return {"_id": f"v{n}", "eventType": "view", "timestamp": stamp, "crmId": person}


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def data(tmp: Path) -> None:
    write(
        tmp / "crm.jsonl",
        [
            # p1: crm's name is the later one; p2: loyalty's is
            crm("p1", 9, name="Crm-late", email="p1@x.com"),
            crm("p2", 8, name="Crm-early"),
            crm("p3", 8, email="p3@x.com"),
            crm("p3", 12, email="p3-new@x.com"),  # a later update of the same person
            {"crmId": "p4", "meta": {"updatedAt": "yesterday"}, "email": "p4@x.com"},  # bad
        ],
    )
    write(
        tmp / "loyalty.jsonl",
        [
            loyalty("p1", 8, name="Loyalty-early", tier="gold"),
            loyalty("p2", 9, name="Loyalty-late", tier="silver"),
            loyalty("p3", 10, tier="gold"),
            loyalty("p3", 11, tier="silver"),  # p3 leaves gold at 11:00 of the export day
            loyalty("p2", None, city="Oslo"),  # no time: kept, ranked by its place in the file
        ],
    )
    write(
        tmp / "web.jsonl",
        [
            *(view(1, "p1", 0), view(2, "p1", 10), view(3, "p2", 20), view(4, "p3", 50)),
            *(view(5, "p3", 100), view(6, "p2", 119)),  # event time moves on: windows close
        ],
    )


def run(tmp: Path, order: list[str], workers: int) -> tuple[list[dict[str, Any]], set[Any]]:
    """(exported profiles, the change stream as a set) of one replay with sources in `order`."""
    data(tmp)
    config = tmp / "cdp.yaml"
    config.write_text(CONFIG.format(sources="\n".join(SOURCES[name] for name in order)))
    replay_files(config, tmp / "state", workers)
    profiles = export(config, tmp / "state", tmp)
    changes = {
        (
            c["id"],
            c["segment_id"],
            c["status"],
            c["profile_id"],
            orjson.dumps(c["identities"], option=orjson.OPT_SORT_KEYS),
            c["event_time"],
            c["reason"],
            c["sequence"],
        )
        for c in read_jsonl(tmp / "changes.jsonl")
    }
    dead = read_jsonl(tmp / "dead.jsonl")
    assert [(d["source"], d["offset"]) for d in dead] == [("crm", 4)]
    assert "timestamp_field meta.updatedAt is not ISO-8601" in dead[0]["reason"]
    return profiles, changes


def comparable(profiles: list[dict[str, Any]]) -> list[bytes]:
    return sorted(orjson.dumps(p, option=orjson.OPT_SORT_KEYS) for p in profiles)


def test_profile_times_make_the_sources_order_irrelevant(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # a: events first, then the profile files; b: the profile files first (their times,
    # weeks after the events, must not drag event time: the 1h window still closes by timer).
    profiles_a, changes_a = run(tmp_path / "a", ["web", "crm", "loyalty"], workers=1)
    profiles_b, changes_b = run(tmp_path / "b", ["loyalty", "crm", "web"], workers=2)
    assert comparable(profiles_a) == comparable(profiles_b)
    assert changes_a == changes_b

    # Equal priorities: the later record wins by its time, whichever source is listed last.
    p1, p2 = by_identity(profiles_a, "CRMID", "p1"), by_identity(profiles_a, "CRMID", "p2")
    p3 = by_identity(profiles_a, "CRMID", "p3")
    assert p1["attributes"]["name"] == "Crm-late"
    assert p2["attributes"]["name"] == "Loyalty-late"
    assert p2["attributes"]["city"] == "Oslo"  # a record without its time is still applied
    assert p3["attributes"]["email"] == "p3-new@x.com" and p3["attributes"]["tier"] == "silver"

    # Each change caused by a profile record carries that record's time; the window rule's
    # changes carry event times.
    seen = {(c[1], c[2], c[5], c[6].split(":")[0]) for c in changes_a}
    assert ("gold", "entered", f"{EXPORT_DAY}T08:00:00Z", "profile") in seen  # p1
    assert ("gold", "entered", f"{EXPORT_DAY}T10:00:00Z", "profile") in seen  # p3
    assert ("gold", "exited", f"{EXPORT_DAY}T11:00:00Z", "profile") in seen  # p3
    assert ("mailable", "entered", f"{EXPORT_DAY}T09:00:00Z", "profile") in seen  # p1
    assert ("viewed-twice-1h", "entered", f"{DAY}T10:10:00Z", "event") in seen  # p1
    assert ("viewed-twice-1h", "exited", f"{DAY}T11:00:00Z", "timer") in seen  # p1
