"""`cdp run`: a live worker over a real broker turns events into audience changes on a topic."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import export
from tests.kafka_broker import consume_all, create_topics, produce

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
  - {{name: crm, kind: profile, topic: {p}crm, identities: {{email: Email}}, priority: 10}}
segments:
  - id: vip-buyers
    rule: 'profile.tier == "vip" and exists(event.eventType == "commerce.purchases")'
  - id: browsers
    rule: 'count(event.eventType == "web.webpagedetails.pageViews") >= 2'
destinations:
  - {{name: changes, kind: kafka, topic: {p}changes}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
state: {{dir: state}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (labels as the exporter sorts them)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def event(i: int, ecid: str, kind: str, email: str | None = None) -> bytes:
    ids = {"ECID": [{"id": ecid}]}
    if email:
        ids["Email"] = [{"id": email}]
    return orjson.dumps(
        {
            "_id": f"e{i}",
            "timestamp": 1_700_000_000_000 + i * 1000,
            "eventType": kind,
            "identityMap": ids,
        }
    )


def test_live_worker_emits_changes(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> None:
    p = topic_prefix
    create_topics(kafka_bootstrap, [f"{p}web", f"{p}crm", f"{p}changes", f"{p}dead"])
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG.format(p=p, bootstrap=kafka_bootstrap))
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config)],
        cwd=Path(__file__).resolve().parents[2],
        env={
            **os.environ,
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),  # a folder
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        produce(
            kafka_bootstrap, f"{p}crm", [orjson.dumps({"email": "VIP@Example.com", "tier": "vip"})]
        )
        produce(
            kafka_bootstrap,
            f"{p}web",
            [
                event(1, "dev-1", "web.webpagedetails.pageViews"),
                event(2, "dev-1", "userAccount.login", email="vip@example.com"),
                event(3, "dev-1", "web.webpagedetails.pageViews"),
                event(4, "dev-1", "commerce.purchases"),
                b"not json at all",
            ],
        )
        deadline = time.monotonic() + 60
        changes: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(changes) < 2:
            assert worker.poll() is None, worker.stdout.read().decode() if worker.stdout else ""
            changes = [
                orjson.loads(v) for v in consume_all(kafka_bootstrap, f"{p}changes", timeout_s=2)
            ]
            entered = {(c["segment_id"], c["status"]) for c in changes}
            if {("vip-buyers", "entered"), ("browsers", "entered")} <= entered:
                break
        entered = {(c["segment_id"], c["status"]) for c in changes}
        assert ("vip-buyers", "entered") in entered
        assert ("browsers", "entered") in entered
        vip = next(c for c in changes if c["segment_id"] == "vip-buyers")
        assert vip["identities"]["Email"] == ["vip@example.com"]  # type: ignore[index]
        # The topics are read concurrently: the purchase or the CRM record may come last.
        assert vip["reason"] in {"event:e4", "profile:crm:0:0", "merge"}
        dead = [orjson.loads(v) for v in consume_all(kafka_bootstrap, f"{p}dead", expected=1)]
        assert [d["reason"].split(":")[0] for d in dead] == ["not JSON"]
        scraped = scrape(f"http://127.0.0.1:{port}/metrics")
        assert scraped['cdp_records_in_total{source="web"}'] == 5
        assert scraped['cdp_records_in_total{source="crm"}'] == 1
        assert scraped['cdp_dead_letters_total{reason="not_json",source="web"}'] == 1
        assert scraped['cdp_audience_changes_total{segment="vip-buyers",status="entered"}'] >= 1
        assert scraped["cdp_identity_links_total"] >= 1
        assert scraped["cdp_cluster_size_count"] >= 1
        assert scraped["cdp_pipeline_latency_seconds_count"] >= 1
        assert scraped["cdp_event_lag_seconds_count"] == 4  # every event with its time
        assert scraped["cdp_rocksdb_bytes"] > 0
    finally:
        # SIGTERM: the worker finishes its batch, flushes its destinations and exits cleanly.
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            raise
    output = worker.stdout.read().decode() if worker.stdout else ""
    assert code == 0, output[-3000:]
    profiles = export(config, tmp_path / "state", tmp_path)
    assert sum(p["events"]["count"] for p in profiles) == 4


PRIVACY_CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
sources:
  - {{name: crm, kind: profile, topic: {p}crm, identities: {{email: Email}}}}
segments:
  - {{id: vip, rule: 'profile.tier == "vip"'}}
destinations:
  - {{name: changes, kind: kafka, topic: {p}changes}}
privacy: {{topic: {p}privacy}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
state: {{dir: state}}
"""


def wait_for(
    bootstrap: str, topic: str, want: set[tuple[str, str]], seconds: float = 60
) -> list[dict[str, object]]:
    """Changes on `topic` once they include every (status, reason kind) in `want`."""
    deadline = time.monotonic() + seconds
    while True:
        changes = [orjson.loads(v) for v in consume_all(bootstrap, topic, timeout_s=2)]
        if want <= {(str(c["status"]), str(c["reason"]).split(":")[0]) for c in changes}:
            return changes
        assert time.monotonic() < deadline, changes


def test_privacy_topic_deletes_a_person(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    p = topic_prefix
    create_topics(kafka_bootstrap, [f"{p}crm", f"{p}changes", f"{p}privacy"])
    config = tmp_path / "cdp.yaml"
    config.write_text(PRIVACY_CONFIG.format(p=p, bootstrap=kafka_bootstrap))
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        produce(
            kafka_bootstrap,
            f"{p}crm",
            [
                orjson.dumps({"email": "Gone@Example.com", "tier": "vip"}),
                orjson.dumps({"email": "stays@example.com", "tier": "vip"}),
            ],
        )
        wait_for(kafka_bootstrap, f"{p}changes", {("entered", "profile")})
        produce(
            kafka_bootstrap, f"{p}privacy", [orjson.dumps({"identity": "Email:GONE@example.com"})]
        )
        changes = wait_for(kafka_bootstrap, f"{p}changes", {("exited", "delete")})
        exits = [c for c in changes if c["reason"] == "delete"]
        assert len(exits) == 1 and exits[0]["identities"] == {"Email": ["gone@example.com"]}
        # A replayed (older) record of the deleted person does not bring them back.
        produce(
            kafka_bootstrap, f"{p}crm", [orjson.dumps({"email": "gone@example.com", "tier": "vip"})]
        )
        time.sleep(2)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
    assert code == 0
    text = orjson.dumps(export(config, tmp_path / "state", tmp_path)).decode()
    assert "gone@example.com" not in text and "stays@example.com" in text
