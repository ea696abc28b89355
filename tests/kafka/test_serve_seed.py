"""The seed of issue #15, end to end, every part real: a tansu broker, a `cdp run` worker and a
`cdp serve` (both subprocesses) on loopback, an HTTP client. A voice skill and a website POST
events through `/v1/collect`; the worker stitches them to the person's email (a web login and
the CRM record that holds the skill's account link) and writes the profile projection; the
server follows it, and `/v1/decisions` for `Email:…` on `home-hero` names the fitness-shirt offer.
Another person gets the default."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kafka_broker import create_topics

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
KEY = "seed-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: ECID}}
  - {{name: VoiceDevice}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
  - {{name: voice, kind: event, topic: {p}voice}}
  - {{name: crm, kind: profile, topic: {p}crm, identities: {{personalEmail.address: Email}}}}
segments:
  - id: asked-for-shirts
    rule: 'exists(event.eventType == "voice.intent" and event.voice.query contains "fitness shirts")'
  - id: yoga-fans
    rule: 'count(event.web.webPageDetails.name == "yoga") >= 2'
destinations:
  - {{name: projection, kind: profiles, topic: {p}profiles}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
state: {{dir: state}}
serve:
  profiles: {{topic: {p}profiles}}
  keys:
    - {{name: voice-skill, key_env: CDP_SEED_KEY, scopes: [read, decide, collect]}}
offers:
  - placement: home-hero
    offers:
      - {{id: fitness-shirts, rule: 'in_segment("asked-for-shirts")', priority: 10, content: {{title: "20% off fitness shirts"}}}}
      - {{id: welcome, priority: 0, content: {{title: "Welcome to Luma"}}}}
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(eid: str, kind: str, ids: dict[str, str], **body: Any) -> dict[str, Any]:
    identity_map = {ns: [{"id": value}] for ns, value in ids.items()}
    return {"_id": eid, "eventType": kind, "timestamp": _now(), "identityMap": identity_map, **body}


def _page(eid: str, ecid: str, name: str) -> dict[str, Any]:
    web = {"webPageDetails": {"name": name}}
    return _event(eid, "web.webpagedetails.pageViews", {"ECID": ecid}, web=web)


def _spawn(args: list[str], tmp: Path, name: str) -> subprocess.Popen[bytes]:
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT,
        env={**os.environ, "CDP_SEED_KEY": KEY},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def seed(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Iterator[httpx.Client]:
    """Topics, the worker and the server running; a client of the server once it is ready."""
    p = topic_prefix
    names = ["web", "voice", "crm", "profiles", "dead"]
    create_topics(kafka_bootstrap, [p + n for n in names])
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG.format(p=p, bootstrap=kafka_bootstrap))
    port = _free_port()
    worker = _spawn(["run", "--config", str(config)], tmp_path, "worker")
    server = _spawn(["serve", "--config", str(config), "--port", str(port)], tmp_path, "serve")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _until(lambda: _ready(client), 30, tmp_path, worker, server)
            yield client
    finally:
        _stop(server)
        _stop(worker)


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def _until(check: Any, timeout_s: float, tmp: Path, *procs: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(f.read_text()[-2000:] for f in sorted(tmp.glob("*.log")))
                raise AssertionError(f"a process ended ({proc.returncode}):\n{logs}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f.read_text()[-2000:] for f in sorted(tmp.glob("*.log")))
            raise AssertionError(f"not true within {timeout_s} s:\n{logs}")
        time.sleep(0.1)


def _decide(client: httpx.Client, identity: str) -> dict[str, Any]:
    body = {"identity": identity, "placement": "home-hero"}
    answer = client.post("/v1/decisions", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _collect(client: httpx.Client, source: str, records: list[dict[str, Any]]) -> None:
    answer = client.post(f"/v1/collect/{source}", json=records, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": len(records)}


def test_voice_intent_and_web_views_choose_the_fitness_shirt_offer(
    seed: httpx.Client, tmp_path: Path
) -> None:
    client = seed
    # the voice skill: an intent from the speaker's device id
    _collect(
        client,
        "voice",
        [
            _event(
                "v-1", "voice.intent", {"VoiceDevice": "echo-77"}, voice={"query": "fitness shirts"}
            )
        ],
    )
    # the website: yoga page views from the browser's ECID, then a login with the email
    _collect(client, "web", [_page("w-1", "ecid-dw", "yoga"), _page("w-2", "ecid-dw", "yoga")])
    login = _event("w-3", "userAccount.login", {"ECID": "ecid-dw", "Email": "DWright@Example.com"})
    _collect(client, "web", [login])
    # the CRM record of the person, with the skill's account link (the voice device id)
    crm = {
        "personalEmail": {"address": "dwright@example.com"},
        "identityMap": {"VoiceDevice": [{"id": "echo-77"}]},
        "loyalty": {"level": "silver"},
    }
    _collect(client, "crm", [crm])
    # another person: a web visitor with an email, no voice intent
    other = _event("w-9", "userAccount.login", {"ECID": "ecid-other", "Email": "other@example.com"})
    _collect(client, "web", [_page("w-8", "ecid-other", "yoga"), other])

    def chosen() -> dict[str, Any] | None:
        decision = _decide(client, "Email:dwright@example.com")
        offer = decision["offer"]
        return decision if offer is not None and offer["id"] == "fitness-shirts" else None

    started = time.monotonic()
    decision = _until(chosen, 45, tmp_path)
    assert decision["placement"] == "home-hero"
    assert decision["offer"]["content"] == {"title": "20% off fitness shirts"}
    assert "asked-for-shirts" in decision["reason"]
    took = time.monotonic() - started

    # one profile: the email, both devices, the segments, the CRM attributes
    lookup = client.post(
        "/v1/profiles/lookup", json={"identity": "Email:DWright@example.com"}, headers=AUTH
    )
    assert lookup.status_code == 200
    profile = lookup.json()
    assert profile["profile_id"] == decision["profile_id"]
    assert profile["identities"]["Email"] == ["dwright@example.com"]
    assert profile["identities"]["ECID"] == ["ecid-dw"]
    assert profile["identities"]["VoiceDevice"] == ["echo-77"]
    assert profile["segments"]["asked-for-shirts"]["status"] == "entered"
    assert profile["segments"]["yoga-fans"]["status"] == "entered"
    assert profile["attributes"]["loyalty"] == {"level": "silver"}
    for device in ("ECID:ecid-dw", "VoiceDevice:echo-77"):
        assert _decide(client, device)["profile_id"] == profile["profile_id"]

    # the other person is known, and gets the default; so does a stranger
    _until(
        lambda: (
            client.post(
                "/v1/profiles/lookup", json={"identity": "Email:other@example.com"}, headers=AUTH
            ).status_code
            == 200
        ),
        30,
        tmp_path,
    )
    theirs = _decide(client, "Email:other@example.com")
    assert theirs["profile_id"] is not None and theirs["profile_id"] != profile["profile_id"]
    assert theirs["offer"]["id"] == "welcome"
    stranger = _decide(client, "Email:nobody@example.com")
    assert stranger["profile_id"] is None and stranger["offer"]["id"] == "welcome"
    assert took < 45
