"""The same Luma input through Kafka topics gives the same profiles as through files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.io import read_records
from tests.helpers import export, luma_config, read_jsonl, run_cli
from tests.kafka_broker import consume_all, create_topics, produce

pytestmark = pytest.mark.kafka


def comparable(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """Profiles by id; a membership's `since` of a record without event time is its arrival,
    which differs between reading files in order and topics concurrently."""
    out = {}
    for profile in profiles:
        p = dict(profile)
        p["segments"] = {k: v["status"] for k, v in p["segments"].items()}
        out[p["profile_id"]] = p
    return out


def test_kafka_replay_equals_files(
    tmp_path: Path, luma_dir: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    config_files = luma_config(files_dir, luma_dir)
    assert (
        run_cli("replay", "--config", config_files, "--files", "--state-dir", files_dir / "state")
        == 0
    )
    expected = export(config_files, files_dir / "state", files_dir)

    kafka_dir = tmp_path / "kafka"
    kafka_dir.mkdir()
    config = luma_config(kafka_dir, luma_dir, bootstrap=kafka_bootstrap, prefix=topic_prefix)
    sources = {
        "crm": "luma-crm.json",
        "loyalty": "luma-loyalty.json",
        "purchases": "luma-offline-purchases.json",
    }
    topics = [f"{topic_prefix}luma.{name}" for name in sources]
    create_topics(kafka_bootstrap, [*topics, f"{topic_prefix}cdp.audience-changes"])
    for name, filename in sources.items():
        values = [raw for _, raw in read_records(luma_dir / filename)]
        assert produce(kafka_bootstrap, f"{topic_prefix}luma.{name}", values) == 1000
    # Send the changes to a Kafka destination as well.
    out_topic = f"{topic_prefix}cdp.audience-changes"
    text = config.read_text().replace(
        "destinations:\n",
        f"destinations:\n  - {{name: audiences-kafka, kind: kafka, topic: {out_topic}}}\n",
    )
    config.write_text(text)
    changes_file = kafka_dir / "changes.jsonl"
    assert (
        run_cli(
            "replay",
            "--config",
            config,
            "--state-dir",
            kafka_dir / "state",
            "--audience-out",
            changes_file,
        )
        == 0
    )
    got = export(config, kafka_dir / "state", kafka_dir)
    assert comparable(got) == comparable(expected)

    file_changes = read_jsonl(changes_file)
    on_topic = consume_all(
        kafka_bootstrap, f"{topic_prefix}cdp.audience-changes", expected=len(file_changes)
    )
    assert len(on_topic) == len(file_changes) > 0
