"""Destination rendering, and the webhook client against a real HTTP server on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from config.settings import DestinationSettings
from flows.webhook import Endpoint, WebhookSink
from operators.destinations import render, render_send
from schemas.records import AudienceChange, JourneySend
from tests.http_server import Server

CHANGE = AudienceChange(
    id="c1",
    segment_id="gold",
    status="entered",
    profile_id="p_1",
    identities={"Email": ["a@example.com"], "ECID": ["e1", "e2"], "Phone": ["+1555"]},
    event_time_ms=1597104000000,
    emitted_at_ms=1597104000123,
    reason="event:x",
    sequence=1,
)


def test_render_selects_segments_identities_and_hashes() -> None:
    dest = DestinationSettings(
        name="ads",
        kind="file",
        path=Path("x"),
        segments=("gold",),
        identities=("Email", "Phone"),
        hash_identities=("Email",),
    )
    doc = orjson.loads(render(CHANGE, dest) or b"")
    assert doc["identities"] == {
        "Email": [hashlib.sha256(b"a@example.com").hexdigest()],
        "Phone": ["+1555"],
    }
    assert (
        doc["event_time"] == "2020-08-11T00:00:00Z"
        and doc["emitted_at"] == "2020-08-11T00:00:00.123Z"
    )
    other = DestinationSettings(name="ads", kind="file", path=Path("x"), segments=("silver",))
    assert render(CHANGE, other) is None


def test_the_exits_of_a_removed_audience_reach_every_destination() -> None:
    """The destination that took "gold" may no longer list it once "gold" is removed."""
    removed = dataclasses.replace(CHANGE, status="exited", reason="removed", sequence=2)
    other = DestinationSettings(name="ads", kind="file", path=Path("x"), segments=("silver",))
    assert orjson.loads(render(removed, other) or b"")["reason"] == "removed"
    consent = DestinationSettings(name="c", kind="file", path=Path("x"), requires_consent=True)
    assert render(dataclasses.replace(removed, consent_denied=True), consent) is None


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(getattr(request, "param", []))
    yield srv
    srv.close()


def _endpoint(url: str) -> Endpoint:
    return Endpoint(url, {}, timeout_s=2)


@pytest.mark.parametrize("server", [[500, 503]], indirect=True)
def test_retries_then_succeeds(server: Server) -> None:
    sleeps: list[float] = []
    result = _endpoint(server.url).post(
        b'{"a":1}', max_attempts=5, backoff_ms=100, sleep=sleeps.append
    )
    assert result.ok and result.attempts == 3
    assert sleeps == [0.1, 0.2]
    assert server.bodies == [b'{"a":1}'] * 3


@pytest.mark.parametrize("server", [[400]], indirect=True)
def test_client_errors_are_not_retried(server: Server) -> None:
    result = _endpoint(server.url).post(b"{}", max_attempts=5, backoff_ms=0)
    assert not result.ok and result.attempts == 1 and result.problem == "HTTP 400"


def test_unreachable_endpoint_gives_up() -> None:
    result = _endpoint("http://127.0.0.1:9/none").post(b"{}", max_attempts=2, backoff_ms=0)
    assert not result.ok and result.attempts == 2 and "connection failed" in result.problem


def test_connections_are_kept_alive() -> None:
    srv = Server([], keep_alive=True)
    try:
        endpoint = _endpoint(srv.url)
        for n in range(20):
            assert endpoint.post(b'{"n":%d}' % n, max_attempts=1, backoff_ms=0).ok
        assert len(srv.bodies) == 20 and len(set(srv.connections)) == 1
    finally:
        srv.close()


def test_a_connection_the_server_dropped_costs_no_attempt() -> None:
    """The server closes each connection after answering: the next POST fails on the stale
    connection before reaching the server, and goes again at once on a new one."""
    srv = Server([], drop_idle=True)
    try:
        endpoint = _endpoint(srv.url)
        sleeps: list[float] = []
        for n in range(5):
            result = endpoint.post(
                b'{"n":%d}' % n, max_attempts=1, backoff_ms=0, sleep=sleeps.append
            )
            assert result.ok and result.attempts == 1, result
        assert srv.bodies == [b'{"n":%d}' % n for n in range(5)]
        assert len(set(srv.connections)) == 5 and sleeps == []
    finally:
        srv.close()


@pytest.mark.parametrize("server", [[500] * 3], indirect=True)
def test_sink_sends_dead_letter_after_last_attempt(server: Server) -> None:
    dead: list[bytes] = []
    dest = DestinationSettings(
        name="crm-hook", kind="webhook", url=server.url, max_attempts=2, backoff_ms=0
    )
    part = WebhookSink(dest, dead.extend).build("w", 0, 1)
    try:
        part.write_batch([("p_1", b'{"n":1}'), ("p_1", b'{"n":2}')])
    finally:
        part.close()
    # One profile, one lane, in order: 1st: 500, 500 -> dead letter; 2nd: 500, then 200.
    assert server.bodies == [b'{"n":1}', b'{"n":1}', b'{"n":2}', b'{"n":2}']
    assert len(dead) == 1
    letter = orjson.loads(dead[0])
    assert letter["reason"] == "webhook crm-hook: HTTP 500 after 2 attempts"
    assert letter["source"] == "destination:crm-hook"


def test_sink_posts_in_parallel_and_each_profile_in_order() -> None:
    """A slow endpoint gets `concurrency` requests at once, never more, and each profile's
    changes in the order they were made, over batches; `write_batch` returns only when its
    batch is delivered (what waits in memory is one batch)."""
    srv = Server([], keep_alive=True, delay_s=0.02)
    dest = DestinationSettings(name="slow", kind="webhook", url=srv.url, concurrency=4)
    part = WebhookSink(dest, lambda _letters: None).build("w", 0, 1)
    try:
        sent = 0
        for _ in range(3):
            batch = [
                (f"p_{n % 10}", b'{"p":%d,"n":%d}' % (n % 10, n)) for n in range(sent, sent + 40)
            ]
            part.write_batch(batch)
            sent += len(batch)
            assert len(srv.bodies) == sent
    finally:
        part.close()
        srv.close()
    assert srv.peak == 4
    arrived = [orjson.loads(b) for b in srv.bodies]
    for profile in range(10):
        order = [a["n"] for a in arrived if a["p"] == profile]
        assert order == sorted(order) and len(order) == 12
    assert len(set(srv.connections)) <= 4  # kept alive: one connection a lane


def test_render_adds_the_destinations_own_part_of_the_payload() -> None:
    payload = {
        "attributes": {"person.name.firstName": "Danny", "tier": "gold"},
        "traits": {"lifetime_value": 120.5},
        "event": {"eventType": "commerce.productListAdds", "productListItems": [{"SKU": "S1"}]},
    }
    change = dataclasses.replace(CHANGE, payload=payload)
    email = DestinationSettings(
        name="email",
        kind="file",
        path=Path("x"),
        identities=("Email",),
        hash_identities=("Email",),
        attributes=("person.name.firstName",),
        event=True,
    )
    doc = orjson.loads(render(change, email) or b"")
    assert doc["identities"] == {"Email": [hashlib.sha256(b"a@example.com").hexdigest()]}
    assert doc["attributes"] == {"person.name.firstName": "Danny"}
    assert doc["event"]["productListItems"] == [{"SKU": "S1"}]
    assert "traits" not in doc and "omitted" not in doc
    plain = DestinationSettings(name="all", kind="file", path=Path("x"))
    assert render(change, plain) == render(CHANGE, plain)  # asks for nothing, gets nothing
    small = email.model_copy(update={"max_payload_bytes": len(render(change, email) or b"") - 1})
    cut = orjson.loads(render(change, small) or b"")
    assert cut["omitted"] == ["event"] and cut["attributes"] == doc["attributes"]


def test_render_send_personalizes_a_journey_send() -> None:
    send = JourneySend(
        id="s1",
        journey_id="cart-reminder",
        version="v1",
        instance_id="i1",
        step="0",
        message="cart-1",
        destination="email",
        profile_id="p_1",
        identities={"Email": ["a@example.com"], "ECID": ["e1"]},
        event_time_ms=1597104000000,
        emitted_at_ms=1597104000123,
        payload={"attributes": {"person.name.firstName": "Danny"}, "event": {"eventType": "x"}},
    )
    email = DestinationSettings(
        name="email",
        kind="webhook",
        url="http://127.0.0.1/x",
        segments=(),
        identities=("Email",),
        attributes=("person.name.firstName",),
        traits=(),
        event=True,
    )
    doc = orjson.loads(render_send(send, email))
    assert doc == {
        **send.to_dict(),
        "identities": {"Email": ["a@example.com"]},
        "attributes": {"person.name.firstName": "Danny"},
        "event": {"eventType": "x"},
    }
    tiny = email.model_copy(update={"max_payload_bytes": 10})
    assert orjson.loads(render_send(send, tiny))["omitted"] == ["event", "attributes"]
    bare = DestinationSettings(name="email", kind="file", path=Path("x"))
    assert render_send(send, bare) == orjson.dumps(send.to_dict())
