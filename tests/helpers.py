"""Helpers shared by flow and Kafka tests: configs in a temp dir, running the CLI, reading state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from flows.cli import main as cdp

ROOT = Path(__file__).resolve().parents[1]


def luma_config(
    tmp: Path, luma_dir: Path, *, bootstrap: str | None = None, prefix: str = ""
) -> Path:
    """config/luma.yaml, pointed at the sample data and at a temp state dir (and topics)."""
    text = (ROOT / "config" / "luma.yaml").read_text()
    text = text.replace("../../shared/data/luma", str(luma_dir))
    text = text.replace("../.cdp-state/", f"{tmp}/")
    if bootstrap:
        text = text.replace('"127.0.0.1:9092"', f'"{bootstrap}"')
    text = text.replace("topic: luma.", f"topic: {prefix}luma.")
    path = tmp / "luma.yaml"
    path.write_text(text)
    return path


def run_cli(*args: str | Path) -> int:
    return cdp([str(a) for a in args])


def replay_files(
    config: Path, state: Path, workers: int = 1, audience_out: Path | None = None
) -> None:
    """`cdp replay --files` in this process; fails the test if it fails."""
    extra: list[str | Path] = ["--audience-out", audience_out] if audience_out else []
    code = run_cli(
        "replay",
        "--config",
        config,
        "--files",
        "--state-dir",
        state,
        "--workers",
        str(workers),
        "--quiet",
        *extra,
    )
    assert code == 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def export(
    config: Path, state: Path, tmp: Path, name: str = "export.jsonl"
) -> list[dict[str, Any]]:
    out = tmp / name
    assert run_cli("export", "--config", config, "--state-dir", state, "--out", out) == 0
    return read_jsonl(out)


def by_identity(profiles: list[dict[str, Any]], namespace: str, value: str) -> dict[str, Any]:
    found = [p for p in profiles if value in p["identities"].get(namespace, [])]
    assert len(found) == 1, f"{namespace}:{value} is in {len(found)} profiles"
    return found[0]


def alternate(changes: list[dict[str, Any]], *, in_order: bool = True) -> bool:
    """entered/exited alternate per (profile, segment), starting with entered, and the
    sequences are 1, 2, 3, … . `in_order`: in the order given (one worker writes the stream);
    else ordered by `sequence` (several workers' sinks interleave)."""
    streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for change in changes:
        streams.setdefault((change["profile_id"], change["segment_id"]), []).append(change)
    for stream in streams.values():
        ordered = stream if in_order else sorted(stream, key=lambda c: c["sequence"])
        for n, change in enumerate(ordered, start=1):
            expected = "entered" if n % 2 else "exited"
            if change["sequence"] != n or change["status"] != expected:
                return False
    return True
