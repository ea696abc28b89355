"""`benchmarks.floor`, the pipeline with the engine taken out, does what the throughput numbers
claim of it: it reads every record, sends one change per record on and the junk to the dead
letters."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from benchmarks import floor
from tests.kafka_broker import consume_all, create_topics, produce

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces: [{{name: ECID}}]
sources: [{{name: web, kind: event, topic: {p}web}}]
destinations: [{{name: out, kind: kafka, topic: {p}out}}]
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
"""


def test_floor_passes_every_record_through(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    p = topic_prefix
    create_topics(kafka_bootstrap, [f"{p}web"], partitions=2)
    create_topics(kafka_bootstrap, [f"{p}out", f"{p}dead"])
    values = [
        orjson.dumps(
            {
                "_id": f"e{i}",
                "timestamp": 1_767_225_600_000 + i,
                "eventType": "view",
                "identityMap": {"ECID": [{"id": f"d{i % 7}"}]},
            }
        )
        for i in range(60)
    ]
    produce(kafka_bootstrap, f"{p}web", [*values, b"junk", b"[]"], key_fn=lambda v: v[-6:])
    config = tmp_path / "floor.yaml"
    config.write_text(CONFIG.format(p=p, bootstrap=kafka_bootstrap))

    assert floor.main(["--config", str(config)]) == 0

    changes = [orjson.loads(v) for v in consume_all(kafka_bootstrap, f"{p}out", expected=60)]
    assert sorted(c["reason"] for c in changes) == sorted(f"event:e{i}" for i in range(60))
    assert {c["segment_id"] for c in changes} == {"floor"}
    dead = consume_all(kafka_bootstrap, f"{p}dead", expected=2)
    assert len(dead) == 2
