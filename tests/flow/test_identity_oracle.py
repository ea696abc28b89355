"""The engine's clusters against an independent offline union-find over the same records.

Generated data with shared family tablets (two people log in on one device) and blocked
values mixed in. With one worker records are applied in input order, so the offline
algorithm, replaying the same order with the same guards, must give exactly the same
clusters. With two workers which conflicting link wins may differ, so the clusters must be
equal wherever no link was refused, and no cluster may break a unique namespace.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import DEFAULT_BLOCKED
from flows.generator import generate, write_files
from tests.helpers import ROOT, export, run_cli

BLOCKED_EXACT = {b.lower() for b in DEFAULT_BLOCKED if not b.startswith("^")}
BLOCKED_RE = [re.compile(b, re.IGNORECASE) for b in DEFAULT_BLOCKED if b.startswith("^")]


def normal(namespace: str, value: Any, how: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if how == "email":
        v = "".join(text.split()).lower()
    elif how == "phone":
        digits = "".join(ch for ch in text if ch.isdigit())
        v = ("+" + digits) if text.strip().startswith("+") and digits else digits
    else:
        v = text.strip()
    given = text.strip()
    if v.lower() in BLOCKED_EXACT or given.lower() in BLOCKED_EXACT:
        return None
    if any(p.fullmatch(v) or p.fullmatch(given) for p in BLOCKED_RE):
        return None
    return v or None


def dig(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def parse(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def usable_event(row: dict[str, Any], src: dict[str, Any]) -> bool:
    """An event needs a readable time and a type (from the record or its source)."""
    ts = row.get("timestamp")
    if isinstance(ts, str):
        try:
            datetime.fromisoformat(ts)
        except ValueError:
            return False
    elif not isinstance(ts, int) or isinstance(ts, bool):
        return False
    kind = row.get("eventType", src.get("event_type"))
    return isinstance(kind, str) and bool(kind)


def records(config: dict[str, Any], directory: Path) -> list[list[tuple[str, str]]]:
    """Each record's identities, best first, in the order `replay --files` reads them."""
    ranks = {ns["name"]: i for i, ns in enumerate(config["namespaces"])}
    how = {ns["name"]: ns.get("normalize", "none") for ns in config["namespaces"]}
    out = []
    for src in config["sources"]:
        text = (directory / src["path"]).read_text()
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [parse(x) for x in text.splitlines() if x.strip()]
        )
        for row in rows:
            if not isinstance(row, dict):
                continue  # junk: the engine dead-letters it
            if src["kind"] == "event" and not usable_event(row, src):
                continue
            found: set[tuple[str, str]] = set()
            for ns, entries in (row.get("identityMap") or {}).items():
                for entry in entries:
                    v = normal(ns, entry.get("id"), how.get(ns, "none"))
                    if v:
                        found.add((ns, v))
            for path, ns in (src.get("identities") or {}).items():
                v = normal(ns, dig(row, path), how.get(ns, "none"))
                if v:
                    found.add((ns, v))
            if found:
                out.append(sorted(found, key=lambda i: (ranks.get(i[0], len(ranks)), i[0], i[1])))
    return out


def offline_clusters(
    recs: list[list[tuple[str, str]]], unique: set[str], cap: int
) -> tuple[set[frozenset[tuple[str, str]]], int]:
    """Union-find with the same guards, as sets of members; and how many links it refused."""
    owner: dict[tuple[str, str], int] = {}
    groups: dict[int, set[tuple[str, str]]] = {}
    refused = next_id = 0
    for ids in recs:
        first = ids[0]
        if first not in owner:
            gid = next_id
            next_id += 1
            owner[first] = gid
            groups[gid] = {first}
        here = owner[first]
        for other in ids[1:]:
            there = owner.get(other)
            if there == here:
                continue
            theirs = groups[there] if there is not None else {other}
            merged = groups[here] | theirs
            if (
                any(len({v for ns, v in merged if ns == u}) > 1 for u in unique)
                or len(merged) > cap
            ):
                refused += 1
                continue
            if there is not None:
                del groups[there]
            groups[here] = merged
            for member in theirs:
                owner[member] = here
    return {frozenset(g) for g in groups.values()}, refused


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("identity")
    stream = generate(3000, 30000, seed=9)
    assert stream.truth["shared_devices"], "the generator makes shared tablets"
    write_files(stream, directory, junk=True)  # junk includes an ECID of "null"
    shutil.copyfile(ROOT / "config" / "demo.yaml", directory / "cdp.yaml")
    return directory, yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


@pytest.mark.parametrize("workers", [1, 2])
def test_clusters_match_offline_union_find(
    data: tuple[Path, dict[str, Any]], tmp_path: Path, workers: int
) -> None:
    directory, config = data
    state = tmp_path / "state"
    assert (
        run_cli(
            "replay",
            "--config",
            directory / "cdp.yaml",
            "--files",
            "--state-dir",
            state,
            "--workers",
            str(workers),
            "--quiet",
        )
        == 0
    )
    profiles = export(directory / "cdp.yaml", state, tmp_path)
    engine = {
        frozenset((ns, v) for ns, vs in p["identities"].items() for v in vs) for p in profiles
    }
    unique = {ns["name"] for ns in config["namespaces"] if ns.get("unique")}
    expected, refused = offline_clusters(records(config, directory), unique, 50)
    print(
        f"workers={workers} clusters={len(expected)} multi={sum(len(c) > 1 for c in expected)} refused={refused}"
    )
    assert refused > 0, "shared tablets must cause refused links"
    for cluster in engine:
        for u in unique:
            assert len([1 for ns, _ in cluster if ns == u]) <= 1
    blocked = [m for c in engine for m in c if normal(m[0], m[1], "none") is None]
    assert blocked == []
    if workers == 1:
        assert engine == expected
    else:
        # Where no link was refused, which link won cannot matter.
        contested = {
            m for c in expected for m in c if any(m[0] == "ECID" and m[1] in s for s in [()])
        }
        touched = set()
        for c in expected ^ engine:
            touched |= c
        calm_expected = {c for c in expected if not c & touched}
        calm_engine = {c for c in engine if not c & touched}
        assert calm_engine == calm_expected
        assert len(touched) < 0.05 * sum(len(c) for c in expected), (
            "differences stay local to conflicts"
        )
        assert not contested
        # Everything else equal: the same identities, all in some cluster.
        assert set().union(*engine) == set().union(*expected)
