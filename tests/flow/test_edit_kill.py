"""A rollout killed in the middle (issue #14): the edited config B's run into config A's state
is SIGKILLed while it rolls the edit out (4 shards, `profile.rollout_batch: 20`: dozens of
batches per shard), then started again with the same command. Where the pass is, is read from
its cursors in the state (opened read-only while the run goes on). The final state equals an
uninterrupted B run into a copy of A's state, and the changes, after dedup by `id`, are the
same set.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from flows.generator import generate, write_files
from operators.steps.rollout import CURRENT_KEY, CURSORS
from operators.store import StoreError, open_state
from tests.flow.test_edits import CONFIG_A, CONFIG_B, fold, split_event_files
from tests.flow.test_stream_batch import CONFIG_HEAD, Segment, members_of, segments_yaml
from tests.helpers import ROOT, alternate, export, read_jsonl, replay_files

pytestmark = pytest.mark.slow

PEOPLE = 1500
EVENTS = 9000
SEED = 21
ROLLOUT = "shards: 4\nprofile: {rollout_batch: 20}\n"
KILL_AT = (0.2, 0.6)  # of the profiles looked at by the pass: where each attempt is killed


def _config(path: Path, segments: tuple[Segment, ...]) -> Path:
    path.write_text(CONFIG_HEAD + segments_yaml(segments) + ROLLOUT)
    return path


def rollout_pass(state: Path) -> tuple[int, bool]:
    """Profiles the rollout's pass has looked at so far, and whether it is done."""
    try:
        store = open_state(state)
    except StoreError:  # not open yet, or being written: ask again
        return 0, False
    try:
        current = store.get(CURRENT_KEY)
        cursors = [orjson.loads(raw) for _, raw in store.scan(CURSORS)]
    finally:
        store.close()
    mine = [c for c in cursors if current is not None and c["version"] == current.decode()]
    return sum(c["profiles"] for c in mine), len(mine) == 4 and all(c["done"] for c in mine)


def _start(
    config: Path, state: Path, out: Path, log: Path, workers: int
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "flows.cli", "replay", "--config", str(config), "--files",
        "--state-dir", str(state), "--audience-out", str(out), "--workers", str(workers),
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stderr=log.open("wb"))


def _comparable(change: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in change.items() if k != "emitted_at"}


@pytest.fixture(
    scope="module",
    params=[(1, "same"), (2, "same"), (1, "more")],
    ids=["1-worker", "2-workers", "1-worker-more-input"],
)
def prepared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A's state, and the uninterrupted B run into a copy of it (the reference). `more`: A
    read the first half of each event file, B reads the rest while it rolls the edit out."""
    workers, variant = request.param
    tmp = tmp_path_factory.mktemp(f"edit-kill-w{workers}-{variant}")
    full, data = tmp / "full", tmp / "data"
    write_files(generate(PEOPLE, EVENTS, seed=SEED), full, junk=False)
    data.mkdir()
    rest = split_event_files(full, data)
    if variant == "same":
        shutil.rmtree(data)
        full.rename(data)
    config_a = _config(data / "a.yaml", CONFIG_A)
    config_b = _config(data / "b.yaml", CONFIG_B)
    replay_files(config_a, tmp / "a", workers, tmp / "changes-a.jsonl")
    if variant == "more":
        for name, tail in rest.items():
            with (data / name).open("ab") as handle:
                handle.write(tail)
    shutil.copytree(tmp / "a", tmp / "ref")
    started = time.monotonic()
    replay_files(config_b, tmp / "ref", workers, tmp / "changes-ref.jsonl")
    took = time.monotonic() - started
    changes = read_jsonl(tmp / "changes-ref.jsonl")
    print(f"\nreference B run: {len(changes)} changes in {took:.1f}s")
    profiles = len(export(config_a, tmp / "a", tmp, "export-a.jsonl"))
    return {
        "tmp": tmp,
        "workers": workers,
        "variant": variant,
        "config_b": config_b,
        "profiles": profiles,
        "ref_export": export(config_b, tmp / "ref", tmp, "export-ref.jsonl"),
        "ref_changes": changes,
    }


def test_a_rollout_killed_midway_finishes_with_the_same_result(prepared: dict[str, Any]) -> None:
    tmp, config = prepared["tmp"], prepared["config_b"]
    assert len(prepared["ref_changes"]) > 200
    assert prepared["profiles"] > 10 * 4 * 20, "the pass takes many batches per shard"
    state = tmp / "killed"
    shutil.copytree(tmp / "a", state)
    midway: list[tuple[int, bool]] = []  # where the pass was when a kill landed
    for attempt, fraction in enumerate((*KILL_AT, None)):
        out, log = tmp / f"changes-{attempt}.jsonl", tmp / f"stderr-{attempt}.txt"
        proc = _start(config, state, out, log, prepared["workers"])
        if fraction is None:
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
            break
        # Killed once the pass is past `fraction`, and past where the last kill left it.
        at = max(fraction * prepared["profiles"], midway[-1][0] + 1 if midway else 0)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if rollout_pass(state)[0] >= at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            midway.append(rollout_pass(state))
        else:
            assert proc.returncode == 0, log.read_text()[-3000:]
    print(f"killed with the pass at {midway} of {prepared['profiles']} profiles")
    assert any(seen > 0 and not done for seen, done in midway), "a kill landed mid-rollout"

    killed = export(config, state, tmp, "export-killed.jsonl")
    written = [c for f in sorted(tmp.glob("changes-[0-9]*.jsonl")) for c in read_jsonl(f)]
    by_id: dict[str, dict[str, Any]] = {}
    for change in written:
        seen = by_id.setdefault(change["id"], _comparable(change))
        assert seen == _comparable(change), "a change sent again is the same change"
    if prepared["variant"] == "same":
        assert killed == prepared["ref_export"]
        assert by_id == {c["id"]: _comparable(c) for c in prepared["ref_changes"]}
        return
    # Records flow while the edit rolls out: where the pass meets them depends on timing, and
    # with it the event time a definition change is stamped with (a membership's `since`) and
    # the transitions of windowed rules on the way. The result does not.
    assert [_held(p) for p in killed] == [_held(p) for p in prepared["ref_export"]]
    changes = [*read_jsonl(tmp / "changes-a.jsonl"), *by_id.values()]
    assert alternate(changes, in_order=False)
    assert fold(changes) == dict(members_of(killed))


def _held(profile: dict[str, Any]) -> dict[str, Any]:
    """A profile with its memberships' statuses only (no `since`)."""
    segments = {s: v["status"] for s, v in profile["segments"].items()}
    return {**profile, "segments": segments}
