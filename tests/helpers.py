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


def alternate(changes: list[dict[str, Any]]) -> bool:
    """entered/exited alternate per (profile, segment), starting with entered."""
    last: dict[tuple[str, str], str] = {}
    for change in changes:
        key = (change["profile_id"], change["segment_id"])
        expected = "exited" if last.get(key) == "entered" else "entered"
        if change["status"] != expected:
            return False
        last[key] = change["status"]
    return True
