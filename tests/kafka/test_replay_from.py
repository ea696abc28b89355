"""`cdp replay --from-timestamp` over Kafka: events before T are skipped by their own time
(tansu's offsets_for_times ignores the time), with a progress line per partition."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.helpers import export, run_cli
from tests.kafka_broker import create_topics, produce

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces: [{{name: ECID}}]
sources: [{{name: web, kind: event, topic: {p}web}}]
segments: [{{id: any, rule: 'exists(event.eventType == "view")'}}]
kafka: {{bootstrap_servers: "{bootstrap}"}}
"""
DAY = 86_400_000
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_replay_from_a_time(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    create_topics(kafka_bootstrap, [f"{topic_prefix}web"], partitions=2)
    values = [
        orjson.dumps(
            {
                "_id": f"e{i}",
                "timestamp": START + (i % 10) * DAY,
                "eventType": "view",
                "identityMap": {"ECID": [{"id": f"d{i % 7}"}]},
            }
        )
        for i in range(200)
    ]
    produce(kafka_bootstrap, f"{topic_prefix}web", values, key_fn=lambda v: v[-8:])
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG.format(p=topic_prefix, bootstrap=kafka_bootstrap))
    state = tmp_path / "state"
    code = run_cli(
        "replay",
        "--config",
        config,
        "--state-dir",
        state,
        "--from-timestamp",
        "2026-01-06T00:00:00Z",
    )
    assert code == 0
    profiles = export(config, state, tmp_path)
    assert sum(p["events"]["count"] for p in profiles) == 100  # days 5..9 of each ten
    assert min(p["events"]["first"] for p in profiles) == "2026-01-06T00:00:00Z"
    err = capsys.readouterr().err
    assert "records applied" in err and "replay finished" in err
