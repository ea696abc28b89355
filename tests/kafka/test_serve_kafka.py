"""`cdp serve` against a real broker: the projection read from a topic, and `/v1/collect`
answered only after the broker acknowledged (and 503 while it is unreachable)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from operators.decode import Decoder
from schemas.records import Origin, Record
from tests.kafka_broker import consume_all, create_topics, produce, proxied_broker
from tests.serve_helpers import (
    ALL,
    READ,
    deleted,
    document,
    server,
    settings_of,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.kafka


def _event(n: int, ecid: str = "ecid-1") -> dict[str, Any]:
    return {
        "_id": f"ev-{n}",
        "eventType": "web.webpagedetails.pageViews",
        "timestamp": "2026-12-01T10:00:00Z",
        "identityMap": {"ECID": [{"id": ecid}]},
        "web": {"webPageDetails": {"name": "yoga"}},
    }


def _lookup(client: httpx.Client, identity: str) -> httpx.Response:
    return client.post("/v1/profiles/lookup", json={"identity": identity}, headers=READ)


def test_projection_topic_is_read_from_the_beginning_and_followed(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}profiles"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    docs = [
        document("p_a", 1, {"Email": ["a@example.com"]}),
        document("p_b", 1, {"Email": ["b@example.com"]}),
        document("p_a", 2, {"Email": ["a@example.com"], "ECID": ["e-a"]}),
    ]
    produce(kafka_bootstrap, topic, [orjson.dumps(d) for d in docs], key_fn=_key)
    produce(kafka_bootstrap, topic, [b"p_b"], key_fn=lambda _v: b"p_b")  # placeholder
    config = write_config(
        tmp_path, profiles=f"{{topic: {topic}}}", bootstrap=kafka_bootstrap, prefix=topic_prefix
    )
    # a tombstone for p_b: key p_b, no value
    _tombstone(kafka_bootstrap, topic, b"p_b")
    with server(settings_of(config), config) as client:
        assert _lookup(client, "ECID:e-a").json()["profile_id"] == "p_a"
        assert _lookup(client, "Email:b@example.com").status_code == 404
        fresh = document("p_c", 1, {"Email": ["c@example.com"]})
        produce(kafka_bootstrap, topic, [orjson.dumps(fresh)], key_fn=_key)
        started = time.monotonic()  # the broker has it
        wait_for(lambda: _lookup(client, "Email:C@example.com").status_code == 200, 10)
        assert time.monotonic() - started < 1.0
        produce(kafka_bootstrap, topic, [orjson.dumps(deleted("p_a", 3))], key_fn=_key)
        wait_for(lambda: _lookup(client, "Email:a@example.com").status_code == 404, 10)
        text = client.get("/metrics").text
        assert 'cdp_serve_projection_documents_total{outcome="bad"} 1.0' in text  # b"p_b"


def _key(value: bytes) -> bytes:
    return str(orjson.loads(value)["profile_id"]).encode()


def _tombstone(bootstrap: str, topic: str, key: bytes) -> None:
    from confluent_kafka import Producer  # noqa: PLC0415

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    producer.produce(topic, value=None, key=key)
    assert producer.flush(30) == 0


@pytest.fixture
def collect_config(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Path:
    create_topics(kafka_bootstrap, [f"{topic_prefix}web", f"{topic_prefix}crm"])
    return write_config(tmp_path, bootstrap=kafka_bootstrap, prefix=topic_prefix)


def _decoded(config: Path, values: list[bytes]) -> list[Record]:
    decoder = Decoder.from_settings(settings_of(config))
    out = [decoder.decode(Origin("web", 0, i), v) for i, v in enumerate(values)]
    assert all(isinstance(r, Record) for r in out), out
    return out  # type: ignore[return-value]


def test_collect_accepts_after_the_broker_has_the_records(
    collect_config: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with server(settings_of(collect_config), collect_config) as client:
        one = client.post("/v1/collect/web", json=_event(1), headers=ALL)
        assert one.status_code == 202 and one.json() == {"accepted": 1}
        many = client.post("/v1/collect/web", json=[_event(2), _event(3, "ecid-2")], headers=ALL)
        assert many.status_code == 202 and many.json() == {"accepted": 2}
        # answered after the acknowledgement: the records are on the topic now
        values = consume_all(kafka_bootstrap, f"{topic_prefix}web", expected=3, timeout_s=10)
        records = _decoded(collect_config, values)
        assert sorted(r.event_id or "" for r in records) == ["ev-1", "ev-2", "ev-3"]
        assert {r.identities for r in records} == {(("ECID", "ecid-1"),), (("ECID", "ecid-2"),)}
        crm = {"personalEmail": {"address": "Dwright@Example.com"}, "loyalty": {"level": "gold"}}
        assert client.post("/v1/collect/crm", json=crm, headers=ALL).status_code == 202
        text = client.get("/metrics").text
        assert 'cdp_serve_collected_records_total{outcome="accepted",source="web"} 3.0' in text


def test_collect_mixed_bad_and_oversize(
    collect_config: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    no_identity = {**_event(5), "identityMap": {"ECID": [{"id": "null"}]}}
    with server(settings_of(collect_config), collect_config) as client:
        mixed = client.post("/v1/collect/web", json=[_event(4), no_identity, [1]], headers=ALL)
        assert mixed.status_code == 207
        body = mixed.json()
        assert body["accepted"] == 1 and body["refused"] == 2
        statuses = [(i["index"], i["status"]) for i in body["items"]]
        assert statuses == [(0, 202), (1, 400), (2, 400)]
        assert "no usable identity" in body["items"][1]["reason"]
        assert "JSON object" in body["items"][2]["reason"]

        junk = client.post("/v1/collect/web", content=b'{"eventType": ', headers=ALL)
        assert junk.status_code == 400 and "not JSON" in junk.json()["detail"]
        none_good = client.post("/v1/collect/web", json=[no_identity], headers=ALL)
        assert none_good.status_code == 400 and none_good.json()["items"][0]["status"] == 400
        assert client.post("/v1/collect/web", json=[], headers=ALL).status_code == 400

        big = {**_event(6), "padding": "x" * (33 * 1024)}
        assert client.post("/v1/collect/web", json=big, headers=ALL).status_code == 413
        assert client.post("/v1/collect/web", json=[_event(7), big], headers=ALL).status_code == 413
        many = [{**_event(100 + i), "padding": "x" * 30_000} for i in range(40)]  # ~1.2 MB
        assert client.post("/v1/collect/web", json=many, headers=ALL).status_code == 413

        assert client.post("/v1/collect/nowhere", json=_event(8), headers=ALL).status_code == 404
        # a source read from a file only has no topic to collect into
        assert client.post("/v1/collect/offline", json=_event(9), headers=ALL).status_code == 404
    # nothing refused was written: only the one good record of the 207
    values = consume_all(kafka_bootstrap, f"{topic_prefix}web", timeout_s=5)
    assert [r.event_id for r in _decoded(collect_config, values)] == ["ev-4"]


def test_collect_answers_503_while_the_broker_is_unreachable_and_writes_nothing_then(
    tmp_path: Path, topic_prefix: str
) -> None:
    with proxied_broker() as (broker, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        create_topics(bootstrap, [f"{topic_prefix}web", f"{topic_prefix}crm"])
        config = write_config(tmp_path, bootstrap=bootstrap, prefix=topic_prefix)
        config.write_text(config.read_text().replace("  keys:", "  delivery_timeout: 2s\n  keys:"))
        with server(settings_of(config), config) as client:
            assert client.post("/v1/collect/web", json=_event(1), headers=ALL).status_code == 202
            proxy.cut()
            started = time.monotonic()
            down = client.post("/v1/collect/web", json=[_event(2), _event(3)], headers=ALL)
            took = time.monotonic() - started
            assert down.status_code == 503
            assert int(down.headers["retry-after"]) >= 1
            assert "send the request again" in down.json()["detail"]
            assert took < 2 + 3  # the delivery timeout, not a hang
            proxy.restore()
            time.sleep(1.0)  # anything librdkafka still held would go out now
            values = consume_all(bootstrap, f"{topic_prefix}web", timeout_s=5)
            assert [r.event_id for r in _decoded(config, values)] == ["ev-1"]
            # the client's retry goes through once the broker is back

            def retried() -> bool:
                answer = client.post("/v1/collect/web", json=[_event(2), _event(3)], headers=ALL)
                return answer.status_code == 202

            wait_for(retried, timeout_s=30)
            values = consume_all(bootstrap, f"{topic_prefix}web", expected=3, timeout_s=10)
            ids = sorted(r.event_id or "" for r in _decoded(config, values))
            assert ids[:3] == ["ev-1", "ev-2", "ev-3"]
        assert broker.running


def test_503_until_the_projection_topic_is_read_then_resume_from_a_kept_store(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    from flows.serve.server import Running  # noqa: PLC0415
    from tests.serve_helpers import KEYS  # noqa: PLC0415

    topic = f"{topic_prefix}profiles"
    config = write_config(
        tmp_path, profiles=f"{{topic: {topic}}}", bootstrap=kafka_bootstrap, prefix=topic_prefix
    )
    config.write_text(config.read_text().replace("  keys:", "  state_dir: kept\n  keys:"))
    running = Running(settings_of(config), config_path=config, port=0, env=KEYS)
    with running, httpx.Client(base_url=running.url, timeout=30) as client:
        # the topic does not exist yet (the worker has not written it): not ready
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "starting"
        early = _lookup(client, "Email:a@example.com")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        create_topics(kafka_bootstrap, [topic])
        produce(
            kafka_bootstrap,
            topic,
            [orjson.dumps(document("p_a", 1, {"Email": ["a@example.com"]}))],
            key_fn=_key,
        )
        wait_for(lambda: client.get("/healthz").status_code == 200, 30)
        assert _lookup(client, "Email:a@example.com").json()["profile_id"] == "p_a"
    produce(
        kafka_bootstrap,
        topic,
        [orjson.dumps(document("p_b", 1, {"Email": ["b@example.com"]}))],
        key_fn=_key,
    )
    with server(settings_of(config), config) as client:
        assert client.get("/healthz").json()["projection"]["applied"] == 1  # p_b only
        assert _lookup(client, "Email:a@example.com").json()["profile_id"] == "p_a"
        assert _lookup(client, "Email:b@example.com").json()["profile_id"] == "p_b"
