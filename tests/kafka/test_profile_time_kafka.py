"""A profile topic of 2 partitions whose records carry no time (issue #14 item 4): each takes
its Kafka message timestamp. Produced in two orders, with the conflicting records of one person
on swapped partitions, replayed with 1 and 2 workers: the same profiles (the later message wins,
whatever its partition) and the same changes, stamped with their records' message times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer

from tests.helpers import by_identity, export, read_jsonl, run_cli
from tests.kafka_broker import create_topics

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces: [{{name: CRMID, unique: true}}]
sources:
  - {{name: crm, kind: profile, topic: {p}crm, priority: 10, identities: {{crmId: CRMID}}}}
  - {{name: web, kind: event, topic: {p}web, identities: {{crmId: CRMID}}}}
segments:
  - {{id: gold, rule: 'profile.tier == "gold"'}}
  - {{id: viewed-twice-1h, rule: 'count(event.eventType == "view", within="1h") >= 2'}}
destinations:
  - {{name: out, kind: file, path: changes.jsonl}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
"""
MIN = 60_000
EVENTS = int(datetime(2026, 11, 1, 10, 0, tzinfo=UTC).timestamp() * 1000)
# When the CRM records were written: weeks after the events (and before the wall clock).
WRITTEN = int(datetime(2026, 11, 20, 8, 0, tzinfo=UTC).timestamp() * 1000)

Message = tuple[int, int, dict[str, Any]]  # (partition, message timestamp, body)


def crm_messages(swap: bool) -> list[Message]:
    """p1's two conflicting records on partitions 0 and 1 (swapped with `swap`), the later
    one by message time second; p2 and p3 in the same places in both layouts."""
    early, late = (1, 0) if swap else (0, 1)
    return [
        (early, WRITTEN, {"crmId": "p1", "tier": "gold", "name": "Early"}),
        (late, WRITTEN + 5 * MIN, {"crmId": "p1", "tier": "silver", "name": "Late"}),
        (0, WRITTEN + 1 * MIN, {"crmId": "p2", "tier": "gold"}),
        (1, WRITTEN + 2 * MIN, {"crmId": "p3", "tier": "gold"}),
        (1, WRITTEN + 3 * MIN, {"crmId": "p3", "tier": "silver"}),
    ]


def views() -> list[Message]:
    at = [("p2", 0), ("p2", 10), ("p3", 50), ("p3", 100), ("p9", 119)]
    body = {"eventType": "view"}
    return [
        (0, EVENTS + m * MIN, {**body, "_id": f"v{i}", "crmId": p, "timestamp": EVENTS + m * MIN})
        for i, (p, m) in enumerate(at)
    ]


def produce(bootstrap: str, topic: str, messages: list[Message]) -> None:
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    for partition, stamp, body in messages:
        producer.produce(
            topic, orjson.dumps(body), partition=partition, timestamp=stamp, on_delivery=delivered
        )
        producer.flush(10)  # one by one: the broker receives them in the order given
    assert not errors, errors


def run(tmp: Path, bootstrap: str, prefix: str, *, swap: bool, workers: int) -> Any:
    create_topics(bootstrap, [f"{prefix}crm"], partitions=2)
    create_topics(bootstrap, [f"{prefix}web"])
    crm = crm_messages(swap)
    if swap:  # partition 1 first, the events in between, partition 0 last
        produce(bootstrap, f"{prefix}crm", [m for m in crm if m[0] == 1])
        produce(bootstrap, f"{prefix}web", views())
        produce(bootstrap, f"{prefix}crm", [m for m in crm if m[0] == 0])
    else:  # the events first, then partition 0, then partition 1
        produce(bootstrap, f"{prefix}web", views())
        produce(bootstrap, f"{prefix}crm", sorted(crm, key=lambda m: m[0]))
    config = tmp / "cdp.yaml"
    config.write_text(CONFIG.format(p=prefix, bootstrap=bootstrap))
    state = tmp / "state"
    code = run_cli(
        "replay", "--config", config, "--state-dir", state, "--workers", str(workers), "--quiet"
    )
    assert code == 0
    return export(config, state, tmp), read_jsonl(tmp / "changes.jsonl")


def test_profile_records_take_their_message_time(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = f"{topic_prefix}a.", f"{topic_prefix}b."
    profiles_a, changes_a = run(tmp_path / "a", kafka_bootstrap, a, swap=False, workers=1)
    profiles_b, changes_b = run(tmp_path / "b", kafka_bootstrap, b, swap=True, workers=2)

    def keyed(profiles: list[dict[str, Any]]) -> dict[str, bytes]:
        return {p["profile_id"]: orjson.dumps(p, option=orjson.OPT_SORT_KEYS) for p in profiles}

    # p1 conflicts: the later message wins, on whichever partition it is. Its memberships
    # fold to the same (its changes depend on which of its records was read first).
    p1_a, p1_b = by_identity(profiles_a, "CRMID", "p1"), by_identity(profiles_b, "CRMID", "p1")
    late = {"crmId": "p1", "tier": "silver", "name": "Late"}
    assert p1_a["attributes"] == p1_b["attributes"] == late
    for p1 in (p1_a, p1_b):
        assert p1["segments"].get("gold", {}).get("status", "exited") == "exited"
    others_a = {k: v for k, v in keyed(profiles_a).items() if k != p1_a["profile_id"]}
    others_b = {k: v for k, v in keyed(profiles_b).items() if k != p1_b["profile_id"]}
    assert others_a == others_b

    def stream(changes: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {
            (c["id"], c["segment_id"], c["status"], c["event_time"], c["reason"], c["sequence"])
            for c in changes
            if c["identities"] != {"CRMID": ["p1"]}
        }

    assert stream(changes_a) == stream(changes_b)
    seen = {(c[1], c[2], c[3], c[4].split(":")[0]) for c in stream(changes_a)}
    assert seen == {
        ("gold", "entered", "2026-11-20T08:01:00Z", "profile"),  # p2, at its message time
        ("gold", "entered", "2026-11-20T08:02:00Z", "profile"),  # p3
        ("gold", "exited", "2026-11-20T08:03:00Z", "profile"),  # p3
        ("viewed-twice-1h", "entered", "2026-11-01T10:10:00Z", "event"),  # p2
        ("viewed-twice-1h", "exited", "2026-11-01T11:00:00Z", "timer"),  # p2
        ("viewed-twice-1h", "entered", "2026-11-01T11:40:00Z", "event"),  # p3
        ("viewed-twice-1h", "exited", "2026-11-01T11:50:00Z", "timer"),  # p3
    }
