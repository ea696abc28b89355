"""The profile projection to a Kafka topic (DESIGN §11): keyed by profile id, the folded topic
(last message per key, as compaction keeps it) equals `cdp export` with traits, and `cdp
forget` produces a tombstone (key, no value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import export, run_cli
from tests.kafka_broker import consume_messages, create_topics, produce

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces: [{{name: ECID}}, {{name: Email, unique: true, normalize: email}}]
sources: [{{name: web, kind: event, topic: {p}web}}]
traits:
  - {{name: spent, value: 'sum(event.amount, event.eventType == "buy")'}}
  - {{name: last_item, value: 'last(event.item, event.eventType == "buy")'}}
segments: [{{id: big, rule: 'profile.traits.spent >= 50'}}]
destinations: [{{name: projection, kind: profiles, topic: {p}profiles}}]
kafka: {{bootstrap_servers: "{bootstrap}"}}
"""
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event(i: int) -> bytes:
    ids: dict[str, Any] = {"ECID": [{"id": f"d{i % 9}"}]}
    if i % 9 == 0:  # d0 logs in: a profile with an email
        ids["Email"] = [{"id": "someone@example.com"}]
    return orjson.dumps(
        {
            "_id": f"e{i}",
            "timestamp": START + i * 60_000,
            "eventType": "buy" if i % 3 == 0 else "view",
            "amount": i,
            "item": f"item-{i}",
            "identityMap": ids,
        }
    )


def test_profiles_topic_folds_to_the_export_and_forget_is_a_tombstone(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}profiles"
    create_topics(kafka_bootstrap, [f"{topic_prefix}web", topic], partitions=2)
    produce(kafka_bootstrap, f"{topic_prefix}web", [event(i) for i in range(120)])
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG.format(p=topic_prefix, bootstrap=kafka_bootstrap))
    state = tmp_path / "state"
    assert run_cli("replay", "--config", config, "--state-dir", state) == 0
    profiles = {p["profile_id"]: p for p in export(config, state, tmp_path)}
    assert len(profiles) == 9
    messages = consume_messages(kafka_bootstrap, topic, timeout_s=20)
    kept: dict[str, dict[str, Any]] = {}
    for m in messages:
        doc = orjson.loads(m.value())
        assert m.key() == doc["profile_id"].encode()
        held = kept.get(doc["profile_id"])
        if held is None or doc["as_of"]["seq"] > held["as_of"]["seq"]:
            kept[doc["profile_id"]] = doc
    assert set(kept) == set(profiles)
    for pid, doc in kept.items():
        assert {k: v for k, v in doc.items() if k not in ("updated_at", "as_of")} == profiles[pid]
    assert any(p["traits"]["spent"] >= 50 for p in profiles.values())
    # The forget: a tombstone, keyed by the forgotten profile's id.
    code = run_cli(
        "forget",
        "--config",
        config,
        "--state-dir",
        state,
        "--identity",
        "Email:someone@example.com",
    )
    assert code == 0
    after = consume_messages(kafka_bootstrap, topic, expected=len(messages) + 1, timeout_s=20)
    tombstones = {m.key().decode() for m in after if m.value() is None}
    (forgotten,) = [p for p in profiles.values() if "Email" in p["identities"]]
    # The profile's own, and one per id its identities could have had as a profile.
    assert forgotten["profile_id"] in tombstones
    assert len(tombstones) == sum(len(v) for v in forgotten["identities"].values())
