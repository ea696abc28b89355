"""Random edits over every rule kind (issue #14): config A is a random set of the segments of
tests/flow/test_stream_batch.py; config B removes some, adds others and gives some ids another
segment's rule. After A then B into one state, memberships equal the batch evaluation of B,
removed ids are gone, and both runs' changes alternate and fold to the export — for several
seeds, with B on the same input and on more.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from flows.generator import generate, write_files
from tests.batch_oracle import evaluate
from tests.flow.test_edits import EVENT_FILES, fold, reason, split_event_files
from tests.flow.test_stream_batch import CONFIG_HEAD, SEGMENTS, Segment, members_of, segments_yaml
from tests.helpers import alternate, export, read_jsonl, replay_files

PEOPLE = 200
EVENTS = 3000
BY_ID = {s.id: s for s in SEGMENTS}


def _reads(seg: Segment) -> set[str]:
    return set(re.findall(r'in_segment\("([^"]+)"\)', seg.rule))


def _closed(chosen: dict[str, Segment]) -> dict[str, Segment]:
    """With every segment a chosen one reads (by id, as test_stream_batch defines it)."""
    out = dict(chosen)
    todo = [s for s in out.values()]
    while todo:
        for dep in _reads(todo.pop()):
            if dep not in out:
                out[dep] = BY_ID[dep]
                todo.append(out[dep])
    return out


def edit(rng: random.Random) -> tuple[dict[str, Segment], dict[str, Segment], set[str]]:
    """A, B and the ids whose rule B changed."""
    ids = sorted(BY_ID)
    a = _closed({i: BY_ID[i] for i in rng.sample(ids, 12)})
    needed = {d for s in a.values() for d in _reads(s)}
    removable = sorted(set(a) - needed)
    removed = set(rng.sample(removable, min(3, len(removable))))
    b = {i: s for i, s in a.items() if i not in removed}
    for i in rng.sample(sorted(set(ids) - set(a)), 5):
        b[i] = BY_ID[i]
    # Some ids of B take another leaf segment's rule (a changed definition).
    leaves = [s for s in SEGMENTS if not _reads(s)]
    changed: set[str] = set()
    for i in rng.sample(sorted(i for i in b if i in a and not _reads(b[i])), 2):
        other = rng.choice([s for s in leaves if s.id != i])
        b[i] = Segment(i, other.rule, other.batch)
        changed.add(i)
    return a, _closed(b), changed


def _write(path: Path, segments: dict[str, Segment]) -> Path:
    path.write_text(CONFIG_HEAD + segments_yaml(tuple(segments.values())))
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("edit-random-data")
    write_files(generate(PEOPLE, EVENTS, seed=3), data, junk=False)
    return data


@pytest.mark.parametrize("variant", ["same", "more"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_edit_equals_the_batch(
    generated: Path, tmp_path: Path, seed: int, variant: str
) -> None:
    a, b, changed = edit(random.Random(seed))
    data = tmp_path / "data"
    data.mkdir()
    rest = split_event_files(generated, data)
    if variant == "same":
        _append(data, rest)
    config_a, config_b = _write(data / "a.yaml", a), _write(data / "b.yaml", b)
    workers = 1 + seed % 2
    replay_files(config_a, tmp_path / "state", workers, tmp_path / "a.jsonl")
    if variant == "more":
        _append(data, rest)
    replay_files(config_b, tmp_path / "state", workers, tmp_path / "b.jsonl")
    profiles = export(config_b, tmp_path / "state", tmp_path)
    oracle = evaluate(config_b, profiles, {i: s.batch for i, s in b.items()})
    stream = members_of(profiles)
    print(f"\nA={sorted(a)}\nB={sorted(b)} changed={sorted(changed)} workers={workers}")
    wrong = {
        i: (sorted(stream.get(i, set()) - want)[:3], sorted(want - stream.get(i, set()))[:3])
        for i, want in oracle.members.items()
        if stream.get(i, set()) != want
    }
    assert wrong == {}
    removed = set(a) - set(b)
    assert [p["profile_id"] for p in profiles if set(p["segments"]) & removed] == []
    changes_b = read_jsonl(tmp_path / "b.jsonl")
    assert all(c["status"] == "exited" for c in changes_b if c["segment_id"] in removed)
    if variant == "same":
        assert {c["segment_id"] for c in changes_b if reason(c) == "removed"} <= removed
        assert {reason(c) for c in changes_b} <= {"definition", "removed"}
    changes = read_jsonl(tmp_path / "a.jsonl") + changes_b
    assert alternate(changes, in_order=workers == 1)
    assert len({c["id"] for c in changes}) == len(changes)
    assert fold(changes) == dict(stream)


def _append(data: Path, rest: dict[str, bytes]) -> None:
    for name in EVENT_FILES:
        with (data / name).open("ab") as handle:
            handle.write(rest[name])
