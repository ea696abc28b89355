"""What a Kafka worker checks and says at start (flows.startup): a mistyped source topic is
refused by name and not created; each partition's start is logged; a saved position past the
end of its partition is a loud warning, and none on tansu, whose high watermark can be under
the true end (tests/kafka_broker.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from config.settings import load_settings
from flows import startup
from tests.helpers import run_cli
from tests.kafka_broker import create_topics, produce

pytestmark = pytest.mark.kafka

CONFIG = """\
namespaces:
  - {{name: ECID}}
sources:
  - {{name: web, kind: event, topic: {web}}}
segments:
  - {{id: viewers, rule: 'count(event.eventType == "web.webpagedetails.pageViews") >= 1'}}
destinations: []
kafka: {{bootstrap_servers: "{bootstrap}"}}
state: {{dir: state}}
"""


def views(n: int, prefix: str) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "_id": f"{prefix}{i}",
                "timestamp": 1_700_000_000_000 + i,
                "eventType": "web.webpagedetails.pageViews",
                "identityMap": {"ECID": [{"id": f"dev-{i}"}]},
            }
        )
        for i in range(n)
    ]


def write_config(tmp: Path, bootstrap: str, web: str) -> Path:
    path = tmp / "cdp.yaml"
    path.write_text(CONFIG.format(web=web, bootstrap=bootstrap))
    return path


def test_a_mistyped_topic_is_refused_by_name_and_not_created(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_topics(kafka_bootstrap, [f"{topic_prefix}web"])
    typo = f"{topic_prefix}wbe"
    config = write_config(tmp_path, kafka_bootstrap, typo)
    assert run_cli("run", "--config", config) == 2
    err = capsys.readouterr().err
    assert f"topic {typo!r} does not exist" in err, err
    assert f"did you mean {topic_prefix}web" in err, err
    assert run_cli("replay", "--config", config, "--state-dir", tmp_path / "s", "--quiet") == 2
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert typo not in topics


def test_start_positions_are_logged_and_a_position_past_the_end_warned(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    first, second = f"{topic_prefix}web", f"{topic_prefix}web2"
    create_topics(kafka_bootstrap, [first, second])
    # One produce call, one batch: tansu then reports the high watermark as the batch's base
    # offset + 1, under the true end (10).
    produce(kafka_bootstrap, first, views(10, "a"), config={"linger.ms": 200})
    config = write_config(tmp_path, kafka_bootstrap, first)
    state = tmp_path / "state"
    settings = load_settings(config)

    (fresh,) = startup.check_sources(settings, state)
    assert (fresh.topic, fresh.partition, fresh.saved, fresh.past_end) == (first, 0, None, False)
    assert "from the beginning" in capfd.readouterr().err

    assert run_cli("replay", "--config", config, "--state-dir", state, "--quiet") == 0
    (again,) = startup.check_sources(settings, state)
    assert again.saved == 10
    assert not again.past_end, again
    assert again.end in (1, 10)  # tansu: 1 (the batch's base offset + 1); Kafka: 10
    err = capfd.readouterr().err
    assert f"reads topic {first} partition 0 (source web) from offset 10 (saved position)" in err
    assert "PAST THE END" not in err

    # The source now names a topic with fewer records: its position is past that end.
    produce(kafka_bootstrap, second, views(3, "b"))
    moved = load_settings(write_config(tmp_path, kafka_bootstrap, second))
    (past,) = startup.check_sources(moved, state)
    assert past.past_end and past.saved == 10 and past.end <= 3, past
    err = capfd.readouterr().err
    assert "SAVED POSITION PAST THE END" in err and second in err, err
