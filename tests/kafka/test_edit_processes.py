"""Audiences edited on two processes (issue #14): `cdp replay` over Kafka topics with config A
on a cluster of two processes, then the same cluster with the edited config B into the same
state. Each process rolls the edit out over its own shards; the memberships equal the batch
evaluation of B (tests/batch_oracle.py), the removed segment is gone, and the changes of both
runs and both processes fold to the exported memberships.

The edit is the one of tests/flow/test_edits.py.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from flows.generator import generate, write_files
from tests.batch_oracle import evaluate
from tests.flow.test_edit_kill import rollout_pass
from tests.flow.test_edits import (
    ADDED,
    CHANGED,
    CONFIG_A,
    CONFIG_B,
    REMOVED,
    fold,
    reason,
    rules,
    split_event_files,
)
from tests.flow.test_stream_batch import CONFIG_HEAD, Segment, members_of, segments_yaml
from tests.helpers import alternate, export, read_jsonl
from tests.kafka.test_processes import _addresses, _ecid_key, _finish, _replay
from tests.kafka_broker import create_topics, produce

pytestmark = pytest.mark.kafka

PEOPLE = 300
EVENTS = 4000
SEED = 12
SOURCES = ("crm", "loyalty", "web", "voice", "store")


def _config(
    data: Path,
    segments: tuple[Segment, ...],
    name: str,
    prefix: str,
    bootstrap: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The sources read their topics (the oracle reads the same records from the files)."""
    raw = yaml.safe_load(CONFIG_HEAD + segments_yaml(segments))
    for src in raw["sources"]:
        src["topic"] = prefix + src["name"]
    raw["identity"] = {"feedback_topic": prefix + "feedback"}
    raw["dead_letters"] = {"kind": "kafka", "topic": prefix + "dead"}
    raw["kafka"] = {"bootstrap_servers": bootstrap}
    raw["recovery"] = {"epoch_interval_ms": 200}
    raw.update(extra or {})
    path = data / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cluster_run(config: Path, state: Path, changes: str) -> list[str]:
    """Both processes of a cluster, to their end; process i writes `changes` with `{i}`."""
    addresses = _addresses(2)
    procs = [
        _replay(config, state, state.parent / changes.format(i=i), "-i", str(i), *addresses)
        for i in range(2)
    ]
    return [_finish(p, timeout=180) for p in procs]


def _produce(bootstrap: str, prefix: str, stream: Any, half: str) -> None:
    """Every profile record and the `first` or `second` half (or `all`) of each event source."""
    for name in SOURCES:
        rows = getattr(stream, name)
        if name not in ("crm", "loyalty") and half != "all":
            cut = len(rows) // 2
            rows = rows[:cut] if half == "first" else rows[cut:]
        elif half == "second":
            continue
        values = [orjson.dumps(r) for r in rows]
        produce(bootstrap, prefix + name, values, _ecid_key if name == "web" else None)


@pytest.fixture(scope="module", params=["same", "more"], ids=["same-input", "more-input"])
def edited(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """`more`: the first run reads the first half of each event topic; the rest is produced
    before the edited run, which rolls the edit out while profiles merge across processes."""
    variant = request.param
    tmp = tmp_path_factory.mktemp(f"edit-procs-{variant}")
    prefix = f"edits{tmp.name[-6:]}{variant}."
    stream = generate(PEOPLE, EVENTS, seed=SEED)
    full, data = tmp / "full", tmp / "data"
    write_files(stream, full, junk=False)
    data.mkdir()
    rest = split_event_files(full, data)  # the oracle reads what the topics hold
    if variant == "same":
        _append(data, rest)
    create_topics(kafka_bootstrap, [prefix + n for n in SOURCES if n != "web"] + [prefix + "dead"])
    create_topics(kafka_bootstrap, [prefix + "web"], partitions=2)
    _produce(kafka_bootstrap, prefix, stream, "all" if variant == "same" else "first")
    config_a = _config(data, CONFIG_A, "a.yaml", prefix, kafka_bootstrap)
    config_b = _config(data, CONFIG_B, "b.yaml", prefix, kafka_bootstrap)
    state = tmp / "state"
    _cluster_run(config_a, state, "a-{i}.jsonl")
    profiles_a = export(config_a, state, tmp, "export-a.jsonl")
    oracle_a = evaluate(config_a, profiles_a, rules(CONFIG_A))
    if variant == "more":
        _append(data, rest)
        _produce(kafka_bootstrap, prefix, stream, "second")
    printed = _cluster_run(config_b, state, "b-{i}.jsonl")
    profiles_b = export(config_b, state, tmp, "export-b.jsonl")
    per_process = [
        len(export(config_b, d, tmp, f"{d.name}.jsonl")) for d in sorted(state.glob("process-*"))
    ]
    return {
        "profiles_a": profiles_a,
        "profiles_b": profiles_b,
        "per_process": per_process,
        "printed": printed,
        "variant": variant,
        "oracle_a": oracle_a,
        "oracle_b": evaluate(config_b, profiles_b, rules(CONFIG_B)),
        "changes_a": read_jsonl(tmp / "a-0.jsonl") + read_jsonl(tmp / "a-1.jsonl"),
        "changes_b": [read_jsonl(tmp / "b-0.jsonl"), read_jsonl(tmp / "b-1.jsonl")],
    }


def _append(data: Path, rest: dict[str, bytes]) -> None:
    for name, tail in rest.items():
        with (data / name).open("ab") as handle:
            handle.write(tail)


def _mismatched(profiles: list[dict[str, Any]], members: dict[str, set[str]]) -> dict[str, Any]:
    stream = members_of(profiles)
    return {
        sid: (len(stream.get(sid, set()) - want), len(want - stream.get(sid, set())))
        for sid, want in members.items()
        if stream.get(sid, set()) != want
    }


def test_before_the_edit_two_processes_equal_the_batch(edited: dict[str, Any]) -> None:
    assert edited["oracle_a"].unplaced == []
    assert _mismatched(edited["profiles_a"], edited["oracle_a"].members) == {}


def test_after_the_edit_two_processes_equal_the_batch_evaluation_of_b(
    edited: dict[str, Any],
) -> None:
    oracle = edited["oracle_b"]
    assert oracle.unplaced == []
    print({sid: len(m) for sid, m in oracle.members.items()})
    assert _mismatched(edited["profiles_b"], oracle.members) == {}
    assert [p["profile_id"] for p in edited["profiles_b"] if REMOVED in p["segments"]] == []
    # Both processes hold profiles, and both rolled the edit out over their own.
    assert len(edited["per_process"]) == 2 and min(edited["per_process"]) > 0
    for changes in edited["changes_b"]:
        reasons = {(c["segment_id"], reason(c)) for c in changes}
        assert (REMOVED, "removed") in reasons
        assert any(sid in ADDED | CHANGED and r == "definition" for sid, r in reasons)


def test_each_former_member_exited_once_with_reason_removed(edited: dict[str, Any]) -> None:
    former = members_of(edited["profiles_a"])[REMOVED]
    told = [c for changes in edited["changes_b"] for c in changes if c["segment_id"] == REMOVED]
    assert all(c["status"] == "exited" for c in told), "nobody enters a removed segment"
    removed = Counter(c["profile_id"] for c in told if reason(c) == "removed")
    if edited["variant"] == "same":
        assert all(reason(c) == "removed" for c in told)
        assert removed == Counter(former)
    else:  # one that merged away first may have left with reason `merge`
        still = former & {p["profile_id"] for p in edited["profiles_b"]}
        assert {pid for pid in still if removed[pid] != 1} == set()
        assert set(removed) <= former


def test_changes_of_both_runs_fold_to_the_export(edited: dict[str, Any]) -> None:
    changes = edited["changes_a"] + [c for part in edited["changes_b"] for c in part]
    assert alternate(changes, in_order=False)
    assert len({c["id"] for c in changes}) == len(changes)
    assert fold(changes) == dict(members_of(edited["profiles_b"]))


def test_two_processes_killed_during_the_rollout(
    kafka_bootstrap: str, tmp_path: Path, topic_prefix: str
) -> None:
    """Both processes SIGKILLed while they roll B out (4 shards, batches of 20), started again
    with the same commands: memberships equal the batch evaluation of B, and the changes,
    after dedup by id, alternate and fold to the export."""
    p = topic_prefix
    stream = generate(1200, 6000, seed=31)
    data = tmp_path / "data"
    write_files(stream, data, junk=False)
    create_topics(kafka_bootstrap, [p + n for n in SOURCES if n != "web"] + [p + "dead"])
    create_topics(kafka_bootstrap, [p + "web"], partitions=2)
    _produce(kafka_bootstrap, p, stream, "all")
    small = {"shards": 4, "profile": {"rollout_batch": 20}}
    config_a = _config(data, CONFIG_A, "a.yaml", p, kafka_bootstrap, small)
    config_b = _config(data, CONFIG_B, "b.yaml", p, kafka_bootstrap, small)
    state = tmp_path / "state"
    _cluster_run(config_a, state, "a-{i}.jsonl")
    profiles = len(export(config_a, state, tmp_path, "export-a.jsonl"))
    midway: list[tuple[int, bool]] = []
    for attempt, fraction in enumerate((0.3, None)):
        addresses = _addresses(2)
        procs = [
            _replay(config_b, state, tmp_path / f"b{attempt}-{i}.jsonl", "-i", str(i), *addresses)
            for i in range(2)
        ]
        if fraction is None:
            for proc in procs:
                _finish(proc, timeout=180)
            break
        deadline = time.monotonic() + 120
        while all(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
            if rollout_pass(state)[0] >= fraction * profiles:
                break
            time.sleep(0.005)
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate(timeout=60)
        midway.append(rollout_pass(state))
    print(f"\nkilled with the pass at {midway} of {profiles} profiles")
    assert any(seen > 0 and not done for seen, done in midway), "a kill landed mid-rollout"
    after = export(config_b, state, tmp_path, "export-b.jsonl")
    oracle = evaluate(config_b, after, rules(CONFIG_B))
    assert _mismatched(after, oracle.members) == {}
    assert [x["profile_id"] for x in after if REMOVED in x["segments"]] == []
    written = [c for f in sorted(tmp_path.glob("[ab]*-[01].jsonl")) for c in read_jsonl(f)]
    unique = {c["id"]: c for c in written}
    assert alternate(list(unique.values()), in_order=False)
    assert fold(list(unique.values())) == dict(members_of(after))
