"""`cdp serve` over a projection file: a real server on loopback, a real HTTP client. The
projection is written here as the contract of issue #15 says (the worker writes it in use)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve_helpers import (
    ALL,
    DECIDE,
    KEYS,
    READ,
    append,
    deleted,
    document,
    merged,
    server,
    settings_of,
    wait_for,
    write_config,
)

SHOPPER = {"Email": ["shopper7@example.com"], "ECID": ["ecid-7"]}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    config = write_config(tmp_path)
    append(
        tmp_path / "profiles.jsonl",
        document(
            "p_shopper",
            3,
            SHOPPER,
            attributes={"interest": "shirts"},
            segments={"asked-for-shirts": "entered"},
            traits={"lifetime_value": 120.0},
        ),
        document("p_gold", 1, {"CRMID": ["c-1"]}, segments={"gold": "entered"}),
    )
    with server(settings_of(config), config) as http:
        yield http


def _lookup(client: httpx.Client, identity: str) -> httpx.Response:
    return client.post("/v1/profiles/lookup", json={"identity": identity}, headers=READ)


def _decide(client: httpx.Client, identity: str, placement: str = "home-hero") -> httpx.Response:
    body = {"identity": identity, "placement": placement}
    return client.post("/v1/decisions", json=body, headers=DECIDE)


def test_lookup_normalises_the_identity_as_the_pipeline_does(client: httpx.Client) -> None:
    answer = _lookup(client, "Email: Shopper7@Example.com ")
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["profile_id"] == "p_shopper"
    assert doc["identities"] == SHOPPER
    assert doc["as_of"]["seq"] == 3 and doc["traits"] == {"lifetime_value": 120.0}
    assert _lookup(client, "ECID:ecid-7").json()["profile_id"] == "p_shopper"
    by_id = client.get("/v1/profiles/p_shopper", headers=READ)
    assert by_id.status_code == 200 and by_id.json() == doc


def test_unknown_identities_and_profiles_are_404(client: httpx.Client) -> None:
    for identity in ("Email:nobody@example.com", "Email:null", "Loyalty:123"):
        answer = _lookup(client, identity)
        assert answer.status_code == 404, identity
        assert answer.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/profiles/p_nobody", headers=READ).status_code == 404


def test_bad_requests_get_400_with_where_not_what(client: httpx.Client) -> None:
    junk = client.post("/v1/profiles/lookup", content=b"{not json", headers=READ)
    assert junk.status_code == 400
    no_colon = _lookup(client, "shopper7@example.com")
    assert no_colon.status_code == 400
    assert "shopper7" not in no_colon.text  # a refusal never echoes the identity
    wrong = client.post("/v1/profiles/lookup", json={"id": "Email:a@b.c"}, headers=READ)
    assert wrong.status_code == 400 and "a@b.c" not in wrong.text
    huge = {"identity": "Email:" + "x" * (1 << 20) + "@example.com"}
    assert client.post("/v1/profiles/lookup", json=huge, headers=READ).status_code == 413


def test_auth_401_without_a_valid_key_and_403_outside_its_scopes(client: httpx.Client) -> None:
    body = {"identity": "Email:shopper7@example.com"}
    assert client.post("/v1/profiles/lookup", json=body).status_code == 401
    bad = {"Authorization": "Bearer not-a-key"}
    answer = client.post("/v1/profiles/lookup", json=body, headers=bad)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/profiles/p_shopper", headers=bad).status_code == 401
    # the decide-only key cannot read, the read-only key cannot decide nor collect
    assert client.post("/v1/profiles/lookup", json=body, headers=DECIDE).status_code == 403
    decision = {**body, "placement": "home-hero"}
    assert client.post("/v1/decisions", json=decision, headers=READ).status_code == 403
    assert client.post("/v1/collect/web", json={}, headers=READ).status_code == 403
    assert client.post("/v1/decisions", json=decision, headers=ALL).status_code == 200


def test_decisions_by_priority_segment_trait_and_the_unknown_default(
    client: httpx.Client,
) -> None:
    shopper = _decide(client, "Email:SHOPPER7@example.com").json()
    assert shopper == {
        "placement": "home-hero",
        "profile_id": "p_shopper",
        "offer": {"id": "fitness-shirts", "content": {"title": "20% off fitness shirts"}},
        "reason": 'rule: in_segment("asked-for-shirts")',
    }
    gold = _decide(client, "CRMID:c-1").json()
    assert gold["offer"]["id"] == "gold-only" and gold["profile_id"] == "p_gold"
    stranger = _decide(client, "Email:stranger@example.com").json()
    assert stranger["profile_id"] is None
    assert stranger["offer"]["id"] == "welcome"
    assert stranger["reason"] == "no rule: always eligible"
    lounge = _decide(client, "Email:stranger@example.com", "members-only").json()
    assert lounge["offer"] is None
    assert _decide(client, "CRMID:c-1", "members-only").json()["offer"]["id"] == "gold-lounge"
    assert _decide(client, "CRMID:c-1", "nowhere").status_code == 404


def test_the_file_is_followed_merges_and_deletes_seen_within_a_second(
    tmp_path: Path, client: httpx.Client
) -> None:
    projection = tmp_path / "profiles.jsonl"

    def visible(identity: str, profile_id: str | None) -> float:
        started = time.monotonic()

        def check() -> bool:
            answer = _lookup(client, identity)
            if profile_id is None:
                return answer.status_code == 404
            return answer.status_code == 200 and answer.json()["profile_id"] == profile_id

        wait_for(check, timeout_s=5)
        return time.monotonic() - started

    append(projection, document("p_new", 1, {"Email": ["new@example.com"]}))
    assert visible("Email:new@example.com", "p_new") < 1.0
    # p_new merges into p_shopper: its identities follow, its id forwards
    append(
        projection,
        merged("p_new", "p_shopper", 2, {"Email": ["new@example.com"]}),
        document("p_shopper", 4, {**SHOPPER, "Email": ["shopper7@example.com", "new@example.com"]}),
    )
    assert visible("Email:new@example.com", "p_shopper") < 1.0
    assert client.get("/v1/profiles/p_new", headers=READ).json()["profile_id"] == "p_shopper"
    # a line still being written is not read until it is whole
    line = b'{"profile_id": "p_half", "identities": {"ECID": ["half"]}, "as_of": {"seq": 1}}'
    with projection.open("ab") as out:
        out.write(line[:20])
        out.flush()
        time.sleep(0.2)
        assert _lookup(client, "ECID:half").status_code == 404
        out.write(line[20:] + b"\n")
    visible("ECID:half", "p_half")
    # forgotten (GDPR): gone, with every identity
    append(projection, deleted("p_shopper", 5))
    assert visible("Email:shopper7@example.com", None) < 1.0
    assert _lookup(client, "Email:new@example.com").status_code == 404
    assert client.get("/v1/profiles/p_shopper", headers=READ).status_code == 404
    assert _decide(client, "Email:shopper7@example.com").json()["profile_id"] is None


def test_healthz_needs_no_key_and_metrics_count_routes_and_lag(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["projection"]["applied"] == 2
    _lookup(client, "Email:shopper7@example.com")
    _lookup(client, "Email:nobody@example.com")
    text = client.get("/metrics").text
    assert 'cdp_serve_requests_total{route="/v1/profiles/lookup",status="200"} 1.0' in text
    assert 'cdp_serve_requests_total{route="/v1/profiles/lookup",status="404"} 1.0' in text
    assert 'cdp_serve_request_seconds_bucket{le="0.01",route="/v1/profiles/lookup"}' in text
    assert "cdp_serve_projection_lag_seconds " in text
    assert 'cdp_serve_projection_documents_total{outcome="applied"} 2.0' in text


def test_openapi_document_lists_the_endpoints(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/profiles/lookup", "/v1/profiles/{profile_id}", "/v1/decisions"} <= paths
    assert "/v1/collect/{source}" in paths and "/healthz" in paths
    assert "ProfileDocument" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_no_identity_value_in_any_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, extra="\n")
    text = config.read_text().replace("  keys:", "  access_log: true\n  keys:")
    config.write_text(text)
    append(tmp_path / "profiles.jsonl", document("p_1", 1, {"Email": ["secret7@example.com"]}))
    with caplog.at_level(logging.DEBUG), server(settings_of(config), config) as http:
        _lookup(http, "Email:secret7@example.com")
        _lookup(http, "Email:other8@example.com")
        http.post(
            "/v1/profiles/lookup", content=b'{"identity": "Email:junk9@example.com"', headers=READ
        )
        http.get("/v1/profiles/p_1", headers=READ)
    server_loggers = ("cdp", "uvicorn")  # httpx, the client here, logs its URLs
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(server_loggers)]
    assert any("/v1/profiles/{profile_id}" in line for line in lines)  # the access log
    assert not [line for line in lines if "@example.com" in line or "p_1" in line]


def test_refused_at_start_without_keys(tmp_path: Path) -> None:
    from config.settings import ConfigError  # noqa: PLC0415
    from flows.serve.server import Running  # noqa: PLC0415

    config = write_config(tmp_path)
    with pytest.raises(ConfigError, match="CDP_TEST_ALL is not set"):
        Running(settings_of(config), env={"CDP_TEST_READ": "x", "CDP_TEST_DECIDE": "y"})


def test_cdp_serve_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    append(tmp_path / "profiles.jsonl", document("p_1", 1, {"Email": ["a@example.com"]}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **KEYS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz").json()["status"] == "ok"
            except httpx.TransportError:
                return False

        wait_for(up, timeout_s=30)
        body = {"identity": "Email:A@example.com"}
        found = httpx.post(f"{url}/v1/profiles/lookup", json=body, headers=READ)
        assert found.json()["profile_id"] == "p_1"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"serving on http://127.0.0.1:{port}" in err
    assert "a@example.com" not in err.lower()


def test_a_kept_store_resumes_where_the_projection_was_read_to(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("  keys:", "  state_dir: serve-state\n  keys:"))
    projection = tmp_path / "profiles.jsonl"
    append(projection, document("p_1", 1, {"Email": ["a@example.com"]}))
    with server(settings_of(config), config) as http:
        assert http.get("/healthz").json()["projection"]["applied"] == 1
    append(projection, document("p_2", 1, {"Email": ["b@example.com"]}))
    with server(settings_of(config), config) as http:
        assert http.get("/healthz").json()["projection"]["applied"] == 1  # only p_2 read
        for identity, pid in (("Email:a@example.com", "p_1"), ("Email:b@example.com", "p_2")):
            assert _lookup(http, identity).json()["profile_id"] == pid
    # the projection rewritten (a new file): read again from its start
    projection.unlink()
    append(projection, document("p_3", 1, {"Email": ["c@example.com"]}))
    with server(settings_of(config), config) as http:
        assert http.get("/healthz").json()["projection"]["applied"] == 1
        assert _lookup(http, "Email:c@example.com").json()["profile_id"] == "p_3"
    # another projection file: the kept store is emptied first
    other = config.read_text().replace("{path: profiles.jsonl}", "{path: other.jsonl}")
    config.write_text(other)
    append(tmp_path / "other.jsonl", document("p_9", 1, {"Email": ["z@example.com"]}))
    with server(settings_of(config), config) as http:
        assert _lookup(http, "Email:a@example.com").status_code == 404
        assert _lookup(http, "Email:z@example.com").status_code == 200


def test_a_sigkilled_server_with_a_kept_store_answers_everything_after_a_restart(
    tmp_path: Path,
) -> None:
    """kill -9 while it follows a growing projection: started again on its kept store, it
    has every document, the ones written while it was down too, and logged no identity."""
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("  keys:", "  state_dir: serve-state\n  keys:"))
    projection = tmp_path / "profiles.jsonl"
    for n in range(200):
        append(projection, document(f"p_{n}", 1, {"Email": [f"u{n}@example.com"]}))

    def start() -> tuple[subprocess.Popen[str], str]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--config", str(config),
             "--port", str(port)],
            env={**os.environ, **KEYS}, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz").json()["status"] == "ok"
            except httpx.TransportError:
                return False

        wait_for(up, timeout_s=30)
        return proc, url

    proc, _ = start()
    for n in range(200, 400):  # written while it follows, then it dies mid-stream
        append(projection, document(f"p_{n}", 1, {"Email": [f"u{n}@example.com"]}))
    proc.kill()
    _, first_err = proc.communicate(timeout=20)
    for n in range(400, 450):  # written while it is down
        append(projection, document(f"p_{n}", 1, {"Email": [f"u{n}@example.com"]}))
    proc, url = start()
    try:
        for n in (0, 199, 200, 399, 400, 449):
            body = {"identity": f"Email:U{n}@example.com"}
            found = httpx.post(f"{url}/v1/profiles/lookup", json=body, headers=READ)
            assert found.status_code == 200 and found.json()["profile_id"] == f"p_{n}"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "example.com" not in (first_err + err).lower()
