"""The profile projection on two processes (DESIGN §2, §11): the profile steps of both write
documents to one topic; a profile that merges into one held by the other process forwards from
its own. Folded by `as_of.seq` per key, the topic equals the export of the two-process state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from flows.generator import generate
from tests.helpers import ROOT, export
from tests.kafka.test_processes import SOURCES, _addresses, _ecid_key, _finish, _replay
from tests.kafka_broker import consume_messages, create_topics, produce

pytestmark = pytest.mark.kafka

TRAITS = [
    {
        "name": "spent",
        "value": 'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases")',
    },
    {"name": "purchases", "value": 'count(event.eventType == "commerce.purchases")'},
]


def test_two_processes_project_every_profile_once_folded(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"projprocs{tmp_path.name[-6:]}."
    stream = generate(400, 4000, seed=13)
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    # The demo's journey sends to the demo's email destination, replaced here.
    config.pop("journeys"), config.pop("journey_caps")
    for src in config["sources"]:
        src["topic"] = prefix + src["name"]
        src.pop("path", None)
    projection = prefix + "profiles"
    config["traits"] = TRAITS
    config["destinations"] = [{"name": "projection", "kind": "profiles", "topic": projection}]
    config["dead_letters"] = {"kind": "kafka", "topic": prefix + "dead"}
    config["kafka"] = {"bootstrap_servers": kafka_bootstrap}
    config["recovery"] = {"epoch_interval_ms": 200}
    config["identity"] = {**config.get("identity", {}), "feedback_topic": prefix + "feedback"}
    names = [prefix + n for n in SOURCES if n != "web"] + [prefix + "dead", projection]
    create_topics(kafka_bootstrap, names)
    create_topics(kafka_bootstrap, [prefix + "web"], partitions=2)
    for name in SOURCES:
        values = [orjson.dumps(r) for r in getattr(stream, name)]
        produce(kafka_bootstrap, prefix + name, values, _ecid_key if name == "web" else None)
    path = tmp_path / "cdp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    state = tmp_path / "two"
    addresses = _addresses(2)
    procs = [
        _replay(path, state, tmp_path / f"changes-{i}.jsonl", "-i", str(i), *addresses)
        for i in range(2)
    ]
    for proc in procs:
        _finish(proc)
    profiles = {p["profile_id"]: p for p in export(path, state, tmp_path)}
    kept: dict[str, dict[str, Any]] = {}
    for m in consume_messages(kafka_bootstrap, projection, timeout_s=30):
        doc = orjson.loads(m.value())
        held = kept.get(doc["profile_id"])
        if held is None or doc["as_of"]["seq"] > held["as_of"]["seq"]:
            kept[doc["profile_id"]] = doc
    live = {pid: d for pid, d in kept.items() if "merged_into" not in d}
    assert set(live) == set(profiles)
    for pid, doc in live.items():
        shown = {k: v for k, v in doc.items() if k not in ("updated_at", "as_of")}
        assert shown == profiles[pid], pid
    forwards = [d for d in kept.values() if "merged_into" in d]
    assert forwards and all(d["profile_id"] not in profiles for d in forwards)
