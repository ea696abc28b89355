"""A down webhook next to a file destination (issue 12, part 4): the replay is not held up
for more than a few seconds, the file gets everything, the webhook's changes wait in its spool
and `cdp redeliver` delivers each once, in order per profile, when the endpoint is back; an
endpoint that fails and comes back during a run gets everything once, in order per profile."""

from __future__ import annotations

import logging
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from flows.generator import generate, write_files
from flows.spool import Spool
from tests.helpers import ROOT, alternate, read_jsonl, run_cli
from tests.http_server import Server


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def write_config(tmp: Path, hook: dict[str, Any]) -> Path:
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    # The demo's journey sends to the demo's email destination, replaced here.
    config.pop("journeys"), config.pop("journey_caps")
    config["destinations"] = [
        {"name": "audiences", "kind": "file", "path": "audience-changes.jsonl"},
        {"name": "hook", "kind": "webhook", **hook},
    ]
    path = tmp / "cdp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def per_profile(changes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each profile's change ids, in the order given."""
    out: dict[str, list[str]] = {}
    for change in changes:
        out.setdefault(change["profile_id"], []).append(change["id"])
    return out


def replay(config: Path, tmp: Path, workers: int = 1, state: Path | None = None) -> float:
    started = time.monotonic()
    code = run_cli(
        "replay", "--config", config, "--files", "--state-dir", state or tmp / "state",
        "--audience-out", tmp / "all.jsonl", "--quiet", "--workers", str(workers),
    )  # fmt: skip
    assert code == 0
    return time.monotonic() - started


def redeliver(config: Path, tmp: Path) -> int:
    return run_cli(
        "redeliver", "--config", config, "--state-dir", tmp / "state", "--destination", "hook"
    )


def test_dead_webhook_holds_up_nothing_and_redeliver_sends_each_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_files(generate(150, 1500, seed=9), tmp_path, junk=False)
    # default retries (5 attempts, 200 ms doubling): one change takes 3 s to fail
    config = write_config(tmp_path, {"url": closed_port_url()})
    seconds = replay(config, tmp_path)
    # down after its first failed deliveries (~3 s); was minutes: every change 5 attempts
    assert seconds < 30, seconds
    expected = read_jsonl(tmp_path / "all.jsonl")
    assert len(expected) > 300
    assert read_jsonl(tmp_path / "audience-changes.jsonl") == expected
    spool = tmp_path / "state" / "spool" / "hook.jsonl"
    spooled = [c["body"] for c in read_jsonl(spool)]
    assert sorted(c["id"] for c in spooled) == sorted(c["id"] for c in expected)
    assert read_jsonl(tmp_path / "dead-letters.jsonl") == []

    held = Spool(spool.parent, "hook")  # as a running worker does
    try:
        assert redeliver(config, tmp_path) == 2
        assert "held by another process" in capsys.readouterr().err
    finally:
        held.close()

    server = Server([], keep_alive=True)
    try:
        config = write_config(tmp_path, {"url": server.url})
        assert redeliver(config, tmp_path) == 0
        assert f"{len(expected)} delivered" in capsys.readouterr().err
        received = [orjson.loads(b) for b in server.bodies]
        assert sorted(c["id"] for c in received) == sorted(c["id"] for c in expected)
        assert per_profile(received) == per_profile(expected)
        assert redeliver(config, tmp_path) == 0  # again: nothing is sent twice
        assert len(server.bodies) == len(expected)
        assert "0 delivered" in capsys.readouterr().err
    finally:
        server.close()


def test_dead_webhook_redeliver_fails_while_still_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workers share the destination's one spool."""
    write_files(generate(40, 300, seed=3), tmp_path, junk=False)
    config = write_config(tmp_path, {"url": closed_port_url(), "backoff_ms": 10})
    replay(config, tmp_path, workers=2)
    waiting = len(read_jsonl(tmp_path / "state" / "spool" / "hook.jsonl"))
    assert waiting == len(read_jsonl(tmp_path / "all.jsonl")) > 0
    assert redeliver(config, tmp_path) == 1
    assert f"{waiting} left in the spool" in capsys.readouterr().err


def test_webhook_that_fails_then_comes_back_gets_everything_once_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One lane: 2 deliveries of 2 attempts answered 503 -> down; then the endpoint answers,
    the next probe (every 100 ms, or the last try when the replay ends) brings it up and the
    spool goes before newer changes of the same profiles."""
    write_files(generate(150, 1500, seed=9), tmp_path, junk=False)
    server = Server([503] * 4, keep_alive=True)
    hook = {
        "url": server.url, "concurrency": 1, "max_attempts": 2, "backoff_ms": 0,
        "down_after": 2, "retry_every": "100ms",
    }  # fmt: skip
    config = write_config(tmp_path, hook)
    try:
        with caplog.at_level(logging.INFO, "cdp.destinations"):
            replay(config, tmp_path)
    finally:
        server.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cdp.destinations"]
    assert [m.split(":")[0] for m in messages] == [
        "destination hook is down",
        "destination hook is back up; delivering its spool",
    ]
    expected = read_jsonl(tmp_path / "all.jsonl")
    received = [orjson.loads(b) for b in server.bodies[4:]]  # after the 503s
    assert sorted(c["id"] for c in received) == sorted(c["id"] for c in expected)
    assert per_profile(received) == per_profile(expected)
    assert (tmp_path / "state" / "spool" / "hook.jsonl").stat().st_size == 0
    assert read_jsonl(tmp_path / "audience-changes.jsonl") == expected


def test_killed_replay_with_a_dead_webhook_loses_nothing_of_its_spool(tmp_path: Path) -> None:
    """kill -9 a replay with a dead webhook a few times mid-run, then let it finish: the spool
    holds every change of an uninterrupted run, each once, and `cdp redeliver` sends them
    in order per (profile, segment)."""
    write_files(generate(1500, 30000, seed=11), tmp_path, junk=False)
    hook = {"url": closed_port_url(), "max_attempts": 2, "backoff_ms": 5, "retry_every": "1s"}
    config = write_config(tmp_path, hook)
    clean = tmp_path / "clean"
    seconds = replay(config, tmp_path, state=clean)
    expected = {c["id"] for c in read_jsonl(clean / "spool" / "hook.jsonl")}
    assert len(expected) > 500

    state = tmp_path / "state"
    command = [
        sys.executable, "-m", "flows.cli", "replay", "--config", str(config), "--files",
        "--state-dir", str(state), "--quiet",
    ]  # fmt: skip
    rng = random.Random(4)
    killed = 0
    for _ in range(3):
        proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 1.5 + seconds))  # python and bytewax start in ~1 s
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert subprocess.run(command, cwd=ROOT, check=False, timeout=300).returncode == 0
    print(f"replay {seconds:.1f}s, killed {killed} times")
    assert killed >= 1
    spooled = [c["body"] for c in read_jsonl(state / "spool" / "hook.jsonl")]
    ids = [c["id"] for c in spooled]
    assert set(ids) == expected and len(ids) == len(set(ids)), f"killed {killed} times"

    server = Server([], keep_alive=True)
    try:
        config = write_config(tmp_path, {**hook, "url": server.url})
        assert redeliver(config, tmp_path) == 0
    finally:
        server.close()
    received = [orjson.loads(b) for b in server.bodies]
    assert sorted(c["id"] for c in received) == sorted(expected)
    assert alternate(received, in_order=True)
