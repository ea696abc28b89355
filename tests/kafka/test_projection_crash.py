"""Kill -9 a Kafka replay with a `profiles` destination, restart it, and fold the projection
file as a reader does (per profile id, the highest `as_of.seq`): it equals the final export,
whatever was sent twice (DESIGN §3, §11)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from flows.generator import generate
from tests.helpers import ROOT, export, read_jsonl
from tests.kafka.test_crash import replay_cmd
from tests.kafka_broker import create_topics, produce

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: VoiceId}}
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
traits:
  - {{name: spent, value: 'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases")'}}
  - {{name: views, value: 'count(event.eventType == "commerce.productViews")'}}
segments:
  - {{id: spenders, rule: 'profile.traits.spent > 150'}}
  - {{id: browsers, rule: 'count(event.eventType == "commerce.productViews", within="1d") >= 3'}}
destinations:
  - {{name: projection, kind: profiles, path: profiles.jsonl}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
recovery: {{epoch_interval_ms: 150}}
"""


def fold(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kept: dict[str, dict[str, Any]] = {}
    for doc in lines:
        held = kept.get(doc["profile_id"])
        if held is None or doc["as_of"]["seq"] > held["as_of"]["seq"]:
            kept[doc["profile_id"]] = doc
        elif doc["as_of"]["seq"] == held["as_of"]["seq"]:
            assert doc == held, "a document sent again is the same document"
    return kept


def test_a_killed_replay_projects_what_it_exports(tmp_path: Path, kafka_bootstrap: str) -> None:
    prefix = f"projcrash{random.randrange(16**6):06x}."
    stream = generate(400, 12000, seed=8)
    create_topics(kafka_bootstrap, [f"{prefix}web"])
    produce(kafka_bootstrap, f"{prefix}web", [orjson.dumps(e) for e in stream.web])
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG.format(p=prefix, bootstrap=kafka_bootstrap))
    state, out = tmp_path / "state", tmp_path / "changes.jsonl"
    rng = random.Random(21)
    killed = 0
    for n in range(4):
        proc = subprocess.Popen(
            replay_cmd(config, state, out, 1),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.3, 1.0) if n == 0 else rng.uniform(0.5, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    done = subprocess.run(
        replay_cmd(config, state, out, 1), cwd=ROOT, capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert killed >= 1, "no kill landed before the replay finished"
    profiles = {p["profile_id"]: p for p in export(config, state, tmp_path)}
    kept = fold(read_jsonl(tmp_path / "profiles.jsonl"))
    live = {pid: d for pid, d in kept.items() if "merged_into" not in d}
    assert set(live) == set(profiles)
    for pid, doc in live.items():
        assert {k: v for k, v in doc.items() if k not in ("updated_at", "as_of")} == profiles[pid]
