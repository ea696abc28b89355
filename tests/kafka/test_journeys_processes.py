"""Journeys on one worker, two workers and two processes (issue #16): `cdp replay` of the same
Kafka topics (web events in two partitions keyed by device) with `late: send` writes the same
journey sends to a file destination: the same ids, steps, instances and triggering events.

The data: people adding to their carts, some buying during the 30-minute wait; every person's
records carry their email (one profile each, no merges: see tests/journey_data.py for what is
known to differ).
The `if` step reads the person's adds of the day (events only: a CRM topic would be read
beside the web topic in no fixed order, and a send's branch would depend on it).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import read_jsonl
from tests.journey_data import ADD, SEGMENTS, comparable, journeys_yaml, stream
from tests.kafka.test_processes import _addresses, _ecid_key, _finish, _replay
from tests.kafka_broker import create_topics, produce

pytestmark = pytest.mark.kafka

PEOPLE = 200
SEED = 17
START_MS = 1_748_736_000_000  # 2025-06-01T00:00:00Z, a year old: sent only with `late: send`
HEAD = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
destinations:
  - {{name: email, kind: file, path: {out}, segments: [], event: true}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
recovery: {{epoch_interval_ms: 200}}
identity: {{feedback_topic: {p}feedback-{run}}}
"""
BRANCH = f'count(event.eventType == "{ADD}", within="1d") >= 2'


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    prefix = f"jprocs{tmp_path_factory.mktemp('j').name[-6:]}."
    web = stream(PEOPLE, START_MS, SEED)
    create_topics(kafka_bootstrap, [prefix + "dead"])
    create_topics(kafka_bootstrap, [prefix + "web"], partitions=2)
    produce(kafka_bootstrap, prefix + "web", [orjson.dumps(e) for e in web], _ecid_key)
    return {"prefix": prefix, "bootstrap": kafka_bootstrap, "events": len(web)}


def config(topics: dict[str, Any], directory: Path, run: str, out: str) -> Path:
    head = HEAD.format(p=topics["prefix"], bootstrap=topics["bootstrap"], run=run, out=out)
    journeys = journeys_yaml(late="send", caps=True).replace('profile.tier == "vip"', BRANCH)
    path = directory / f"{run}-{out}.yaml"
    path.write_text(head + SEGMENTS + journeys)
    return path


def one_process(topics: dict[str, Any], tmp: Path, workers: int) -> list[dict[str, Any]]:
    run = f"w{workers}"
    cfg = config(topics, tmp, run, f"{run}.jsonl")
    args = ("--workers", str(workers))
    _finish(_replay(cfg, tmp / run, tmp / f"{run}-changes.jsonl", *args), timeout=180)
    return read_jsonl(tmp / f"{run}.jsonl")


def two_processes(topics: dict[str, Any], tmp: Path) -> list[list[dict[str, Any]]]:
    """Each process writes its sends to its own file (its own config, else the same)."""
    addresses = _addresses(2)
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(2):
        cfg = config(topics, tmp, "p2", f"p2-{i}.jsonl")
        out = tmp / f"p2-changes-{i}.jsonl"
        procs.append(_replay(cfg, tmp / "p2", out, "-i", str(i), *addresses))
    for proc in procs:
        _finish(proc, timeout=180)
    return [read_jsonl(tmp / f"p2-{i}.jsonl") for i in range(2)]


def test_one_and_two_workers_and_two_processes_send_the_same(
    topics: dict[str, Any], tmp_path: Path
) -> None:
    one = one_process(topics, tmp_path, 1)
    two = one_process(topics, tmp_path, 2)
    per_process = two_processes(topics, tmp_path)
    cluster = per_process[0] + per_process[1]
    messages = Counter(s["message"] for s in one)
    print(
        f"{topics['events']} events, {len(one)} sends {dict(messages)}; per process",
        [len(p) for p in per_process],
    )
    assert messages["cart-1"] > 50 and messages["cart-vip"] > 5 and messages["cart-2"] > 20
    assert len({s["id"] for s in one}) == len(one), "a send was written twice"
    assert all(s["event"]["eventType"] == ADD and s["event"]["productListItems"] for s in one)
    assert min(len(p) for p in per_process) > 0.2 * len(one), "one process sent (nearly) all"
    expected = sorted(map(comparable, one))
    assert sorted(map(comparable, two)) == expected
    assert sorted(map(comparable, cluster)) == expected
