"""`cdp replay --files` into the same state again: what was appended to a file, and files that
are new (a glob source, e.g. a daily CRM drop), are read; nothing read before is sent again."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.helpers import export, read_jsonl, replay_files, run_cli

CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: crm, kind: profile, path: drops/crm-*.jsonl, identities: {email: Email}}
  - {name: web, kind: event, path: web.jsonl}
segments:
  - {id: vip, rule: 'profile.tier == "vip"'}
  - {id: buyers, rule: 'exists(event.eventType == "buy")'}
destinations:
  - {name: out, kind: file, path: changes.jsonl}
"""


def lines(*records: dict[str, object]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def buy(n: int, device: str) -> dict[str, object]:
    return {
        "_id": f"b{n}",
        "eventType": "buy",
        "timestamp": f"2026-11-0{n}T10:00:00Z",
        "identityMap": {"ECID": [{"id": device}]},
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_replay_reads_appended_lines_and_new_files(tmp_path: Path, workers: int) -> None:
    (tmp_path / "cdp.yaml").write_text(CONFIG)
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "crm-2026-11-01.jsonl").write_bytes(lines({"email": "a@x.com", "tier": "vip"}))
    web = tmp_path / "web.jsonl"
    web.write_bytes(lines(buy(1, "d1")))
    config, state = tmp_path / "cdp.yaml", tmp_path / "state"
    replay_files(config, state, workers)
    first = read_jsonl(tmp_path / "changes.jsonl")
    assert {(c["segment_id"], c["status"]) for c in first} == {
        ("vip", "entered"),
        ("buyers", "entered"),
    }

    # The next day: a new CRM drop that sorts first by name, and two more web lines.
    (drops / "crm-2026-10-31-late.jsonl").write_bytes(lines({"email": "b@x.com", "tier": "vip"}))
    (drops / "crm-2026-11-02.jsonl").write_bytes(lines({"email": "c@x.com", "tier": "basic"}))
    with web.open("ab") as handle:
        handle.write(lines(buy(2, "d2"), buy(3, "d3")))
    replay_files(config, state, workers)
    changes = read_jsonl(tmp_path / "changes.jsonl")
    added = changes[len(first) :]
    assert sorted((c["segment_id"], c["status"]) for c in added) == [
        ("buyers", "entered"),
        ("buyers", "entered"),
        ("vip", "entered"),
    ]
    assert len({c["id"] for c in changes}) == len(changes)  # nothing sent twice
    profiles = export(config, state, tmp_path)
    emails = {e for p in profiles for e in p["identities"].get("Email", [])}
    assert emails == {"a@x.com", "b@x.com", "c@x.com"}
    assert sum(p["events"]["count"] for p in profiles) == 3

    # A third replay with nothing new sends nothing.
    replay_files(config, state, workers)
    assert len(read_jsonl(tmp_path / "changes.jsonl")) == len(changes)


def test_a_glob_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cdp.yaml").write_text(CONFIG)
    (tmp_path / "web.jsonl").write_bytes(lines(buy(1, "d1")))
    code = run_cli(
        "replay", "--config", tmp_path / "cdp.yaml", "--files", "--state-dir", tmp_path / "s"
    )
    assert code == 2
