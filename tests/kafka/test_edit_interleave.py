"""A live worker rolling an edit out keeps applying records (issue #14: the rollout "does not
stop live records from being applied for longer than a batch"). Config A's state is built from
files; `cdp run` with the edited config B (and one more source, a Kafka topic) starts the pass
over the store in small batches; a purchase produced while the pass runs is applied, and its
change emitted, before the pass ends (the worker's log says when it does).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from flows.generator import generate, write_files
from tests.flow.test_edit_kill import rollout_pass
from tests.flow.test_edits import CONFIG_A, CONFIG_B, reason
from tests.flow.test_stream_batch import CONFIG_HEAD, members_of, segments_yaml
from tests.helpers import ROOT, export, read_jsonl, replay_files
from tests.kafka_broker import create_topics, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SMALL = "shards: 4\nprofile: {rollout_batch: 1}\n"


def test_records_are_applied_while_the_edit_rolls_out(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    p = topic_prefix
    stream = generate(1500, 9000, seed=21)
    write_files(stream, tmp_path, junk=False)
    last_time = max(e["timestamp"] for e in stream.web)
    config_a = tmp_path / "a.yaml"
    config_a.write_text(CONFIG_HEAD + segments_yaml(CONFIG_A) + SMALL)
    state = tmp_path / "state"
    replay_files(config_a, state, 1)
    profiles = export(config_a, state, tmp_path, "export-a.jsonl")
    buyers = members_of(profiles)["buyers"]
    person = next(
        x for x in profiles if x["profile_id"] not in buyers and "ECID" in x["identities"]
    )
    ecid = person["identities"]["ECID"][0]

    create_topics(kafka_bootstrap, [f"{p}live", f"{p}dead"])
    config_b = tmp_path / "b.yaml"
    config_b.write_text(
        CONFIG_HEAD
        + f"  - {{name: live, kind: event, topic: {p}live}}\n"
        + segments_yaml(CONFIG_B)
        + SMALL
        + f"dead_letters: {{kind: kafka, topic: {p}dead}}\n"
        + f'kafka: {{bootstrap_servers: "{kafka_bootstrap}"}}\n'
        + "recovery: {epoch_interval_ms: 200}\n"
    )
    changes = tmp_path / "changes.jsonl"
    cmd = [
        sys.executable, "-m", "flows.cli", "run", "--config", str(config_b),
        "--state-dir", str(state), "--audience-out", str(changes),
    ]  # fmt: skip
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(cmd, cwd=ROOT, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + 60
        while rollout_pass(state)[0] == 0 and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.01)
        started = rollout_pass(state)
        event_id = "live-purchase-1"
        purchase = {
            "_id": event_id,
            "eventType": "commerce.purchases",
            "timestamp": last_time,  # at the state's event time: no window moves
            "commerce": {"order": {"priceTotal": 12.5}},
            "identityMap": {"ECID": [{"id": ecid}]},
        }
        produce(kafka_bootstrap, f"{p}live", [orjson.dumps(purchase)])
        seen: tuple[int, bool] | None = None
        entered: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            entered = [
                c
                for c in read_jsonl(changes)
                if c["reason"] == f"event:{event_id}" and c["segment_id"] == "buyers"
            ]
            if entered and seen is None:
                seen = rollout_pass(state)
            if seen is not None and "rollout: done" in log.read_text():
                break
            time.sleep(0.02)
        assert "rollout: done" in log.read_text(), log.read_text()[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    print(f"\npass at {started} when the record was produced, at {seen} when its change came")
    assert entered and entered[0]["status"] == "entered"
    rolled = [c for c in read_jsonl(changes) if reason(c) == "definition"]
    assert rolled
    assert entered[0]["emitted_at"] < max(c["emitted_at"] for c in rolled)
