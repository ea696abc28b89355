"""Junk mixed into a real stream goes to the dead letters with a reason, and the results for
the good records are exactly those of the same stream without junk."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import orjson

from flows.generator import generate, write_files
from tests.helpers import ROOT, export, read_jsonl, run_cli

JUNK = [
    b"{not json",
    b"\xff\xfe\xfd broken utf-8",
    b'"a string"',
    b"[1, 2, 3]",
    orjson.dumps({"eventType": "commerce.purchases", "identityMap": {"ECID": [{"id": "x"}]}}),
    orjson.dumps(
        {"timestamp": "next tuesday", "eventType": "x", "identityMap": {"ECID": [{"id": "x"}]}}
    ),
    orjson.dumps({"timestamp": 1, "eventType": "x", "identityMap": {"ECID": [{"id": "y" * 5000}]}}),
    orjson.dumps({"timestamp": 1, "eventType": "x", "identityMap": {"ECID": [{"id": "null"}]}}),
    orjson.dumps({"timestamp": 1, "eventType": 7, "identityMap": {"ECID": [{"id": "z"}]}}),
    orjson.dumps({"timestamp": 1, "eventType": "x", "identityMap": "ECID=1"}),
    orjson.dumps(
        {
            "timestamp": 1,
            "eventType": "x",
            "identityMap": {"ECID": [{"id": "big"}]},
            "pad": "p" * 10_500_000,
        }
    ),
]


def run(
    directory: Path,
) -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
    config = directory / "cdp.yaml"
    shutil.copyfile(ROOT / "config" / "demo.yaml", config)
    state = directory / "state"
    out = directory / "changes.jsonl"
    assert (
        run_cli(
            "replay", "--config", config, "--files", "--state-dir", state, "--audience-out", out
        )
        == 0
    )
    return (
        export(config, state, directory),
        read_jsonl(out),
        read_jsonl(directory / "dead-letters.jsonl"),
    )


def test_junk_changes_nothing_for_good_records(tmp_path: Path) -> None:
    stream = generate(300, 4000, seed=21)
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    for d in (clean, dirty):
        d.mkdir()
        write_files(stream, d, junk=False)
    # Junk lines go in at random places of the web and voice streams, plus the JSON files
    # stay intact (a broken JSON-array file is refused as a whole at start instead).
    rng = random.Random(4)
    for name in ("web.jsonl", "voice.jsonl"):
        lines = (dirty / name).read_bytes().splitlines()
        for junk in JUNK:
            lines.insert(rng.randrange(len(lines)), junk)
        (dirty / name).write_bytes(b"\n".join(lines) + b"\n")

    clean_profiles, clean_changes, clean_dead = run(clean)
    profiles, changes, dead = run(dirty)
    assert clean_dead == []
    assert len(dead) == 2 * len(JUNK)
    reasons = {str(d["reason"]).split(":")[0] for d in dead}
    assert reasons >= {
        "not JSON",
        "event has no timestamp",
        "timestamp is not ISO-8601",
        "no usable identity (none present, or all empty or blocked)",
        "eventType must be a non-empty string",
    }
    assert any("over the limit" in str(d["reason"]) for d in dead)
    assert any("5000 characters" in str(d["reason"]) for d in dead)
    assert {str(d["source"]) for d in dead} == {"web", "voice"}
    assert profiles == clean_profiles
    key = lambda c: (c["id"], c["status"], c["event_time"], c["reason"])  # noqa: E731
    assert sorted(map(key, changes)) == sorted(map(key, clean_changes))
