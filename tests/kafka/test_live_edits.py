"""Audiences edited on a live system (DESIGN §13), with the faults of a live run: a worker with
config A is SIGKILLed, a worker with the edited config B starts on the same state and rolls the
edit out while the broker is cut and restored, junk arrives meanwhile. Every change reaches the
Kafka topic; folded, the changes give the exported memberships, which are B's answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import ROOT, alternate, export
from tests.kafka.outage import Worker, during, ids, wait_until
from tests.kafka_broker import consume_all, create_topics, produce, proxied_broker

pytestmark = pytest.mark.kafka

PEOPLE = 2000

CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
  - {{name: crm, kind: profile, topic: {p}crm, identities: {{email: Email}}, priority: 10}}
segments:
{segments}
destinations:
  - {{name: changes, kind: kafka, topic: {p}changes}}
  - {{name: file, kind: file, path: changes.jsonl}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
recovery: {{epoch_interval_ms: 500}}
profile: {{rollout_batch: 1}}
state: {{dir: state}}
"""
A = {
    "vip": 'profile.tier == "vip"',
    "basic": 'profile.tier == "basic"',
    "browsers": 'count(event.eventType == "web.webpagedetails.pageViews") >= 2',
}
B = {
    "vip": 'profile.tier == "vip"',  # unchanged
    "browsers": 'count(event.eventType == "web.webpagedetails.pageViews") >= 3',  # changed
    "checkers": 'count(event.eventType == "commerce.checkouts") >= 1',  # reads new events
}  # "basic" removed


def _segments(rules: dict[str, str]) -> str:
    return "\n".join(f"  - {{id: {k}, rule: {json.dumps(v)}}}" for k, v in rules.items())


def _tier(i: int) -> str:
    return ("basic", "vip", "none")[i % 3]


def _views(i: int) -> int:
    return i % 5


def _checkouts(i: int) -> int:
    return 1 if i % 4 == 0 else 0


def _events(people: range, start_ms: int) -> list[bytes]:
    out: list[bytes] = []
    n = 0
    for i in people:
        kinds = ["web.webpagedetails.pageViews"] * _views(i) + ["commerce.checkouts"] * _checkouts(
            i
        )
        for kind in kinds:
            n += 1
            out.append(
                orjson.dumps(
                    {
                        "_id": f"e{i}-{n}",
                        "timestamp": start_ms + n,
                        "eventType": kind,
                        "identityMap": {
                            "ECID": [{"id": f"d{i}"}],
                            "Email": [{"id": f"u{i}@example.com"}],
                        },
                    }
                )
            )
    return out


def _write(worker: Worker, rules: dict[str, str]) -> None:
    worker.config.write_text(
        CONFIG.format(p=worker.prefix, bootstrap=worker.bootstrap, segments=_segments(rules))
    )


def _expected(rules: dict[str, str], people: int, crm: int = PEOPLE) -> dict[str, set[str]]:
    """Who is in each segment, for persons 0..people-1 of whom 0..crm-1 have a CRM record."""
    want: dict[str, set[str]] = {seg: set() for seg in rules}
    for i in range(people):
        email = f"u{i}@example.com"
        tier = _tier(i) if i < crm else None
        if "vip" in rules and tier == "vip":
            want["vip"].add(email)
        if "basic" in rules and tier == "basic":
            want["basic"].add(email)
        threshold = 2 if rules["browsers"].endswith("2") else 3
        if _views(i) >= threshold:
            want["browsers"].add(email)
        if "checkers" in rules and _checkouts(i):
            want["checkers"].add(email)
    return want


def _members(profiles: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for p in profiles:
        for seg, held in p["segments"].items():
            if held["status"] == "entered":
                out[seg].update(p["identities"]["Email"])
    return out


def test_an_edit_rolls_out_through_a_kill_an_outage_and_junk(tmp_path: Path) -> None:
    with proxied_broker() as (_broker, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        p = "edits."
        create_topics(bootstrap, [f"{p}web", f"{p}crm", f"{p}changes", f"{p}dead"])
        worker = Worker(tmp_path, p, bootstrap)
        _write(worker, A)
        worker.start("run")
        now = int(time.time() * 1000) - 60_000
        people = range(PEOPLE)
        produce(
            bootstrap,
            f"{p}crm",
            [orjson.dumps({"email": f"u{i}@example.com", "tier": _tier(i)}) for i in people],
        )
        produce(bootstrap, f"{p}web", _events(people, now))
        want_a = _expected(A, PEOPLE)
        total_a = sum(len(v) for v in want_a.values())
        wait_until("A's changes", lambda: len(worker.file_rows()) >= total_a, 120, worker)
        time.sleep(1.0)  # a snapshot or two, then the hard kill
        assert worker.proc is not None
        worker.proc.kill()
        worker.proc.wait()
        a_rows = worker.file_rows()
        assert {(r["segment_id"], r["status"]) for r in a_rows} == {(s, "entered") for s in A}

        # The edit: "basic" removed, "browsers" changed, "checkers" added over events no rule
        # of A read (rebuilt from the history).
        _write(worker, B)
        worker.start("run")

        def rollout() -> list[dict[str, Any]]:
            return [r for r in worker.file_rows() if r["reason"] in ("definition", "removed")]

        wait_until("the rollout to start", lambda: len(rollout()) > 0, 60, worker)
        cut_at = len(rollout())
        for _ in during(proxy, 6.0, worker):
            pass
        produce(bootstrap, f"{p}web", [b"not json", b'{"eventType": "x"}'])
        late = _events(range(PEOPLE, PEOPLE + 3), now + 10_000)
        produce(bootstrap, f"{p}web", late)
        want_b = _expected(B, PEOPLE + 3)
        removed = want_a["basic"]
        rolled_b = _expected(B, PEOPLE)
        expected_rollout = (
            len(removed)  # exited, reason removed
            + len(rolled_b["checkers"])  # entered, reason definition
            + len(want_a["browsers"] - rolled_b["browsers"])  # exited, reason definition
        )

        def delivered() -> bool:
            rows = {r["id"]: r for r in worker.kafka_changes(timeout_s=2)}.values()
            rolled = [r for r in rows if r["reason"] in ("definition", "removed")]
            late_in = [r for r in rows if r["reason"].startswith(f"event:e{PEOPLE}")]
            return len(rolled) == expected_rollout and len(late_in) >= 1

        wait_until("every change on Kafka", delivered, 120, worker)
        # Preview opens the state read-only beside the running worker.
        previewed = subprocess.run(
            [sys.executable, "-m", "flows.cli", "segments", "preview", "--config",
             str(worker.config), "--rule", B["checkers"], "--json"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        assert json.loads(previewed.stdout)["size"] == len(want_b["checkers"])
        assert worker.alive()
        dead = [orjson.loads(v) for v in consume_all(bootstrap, f"{p}dead", expected=2)]
        assert worker.stop() == 0, worker.tail()
        kafka = list({r["id"]: r for r in worker.kafka_changes(timeout_s=3)}.values())

    # The rollout's own progress on the file destination when the broker was cut.
    assert cut_at < expected_rollout, "the outage began after the rollout was over"
    profiles = export(worker.config, tmp_path / "state", tmp_path)
    assert _members(profiles) == {k: v for k, v in want_b.items() if v}
    assert all("basic" not in p["segments"] for p in profiles)
    rows = sorted(kafka, key=lambda r: (r["profile_id"], r["segment_id"], r["sequence"]))
    assert alternate(list(rows), in_order=False)
    exits = [r for r in rows if r["reason"] == "removed"]
    assert {r["identities"]["Email"][0] for r in exits} == removed
    assert {(r["segment_id"], r["status"]) for r in exits} == {("basic", "exited")}
    assert len(dead) == 2 and dead[0]["reason"].startswith("not JSON")
    # Folded per (profile, segment), the topic gives the exported memberships.
    last: dict[tuple[str, str], str] = {}
    for r in rows:
        last[(r["profile_id"], r["segment_id"])] = r["status"]
    exported = {
        (p["profile_id"], seg): held["status"]
        for p in profiles
        for seg, held in p["segments"].items()
    }
    assert {k: v for k, v in last.items() if k[1] != "basic"} == exported
    # The file destination saw the same changes (at least once each).
    assert ids(worker.file_rows()) == ids(kafka)
