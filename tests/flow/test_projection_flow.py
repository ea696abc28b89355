"""The profile projection through the dataflow (DESIGN §11): `cdp replay --files` with a
`profiles` destination writing a JSON-lines file. Folded as a reader folds it (per profile id,
the document with the highest `as_of.seq`), it equals `cdp export` (with traits); every
merged-away profile forwards to a live one; `cdp forget` appends a deleted record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.generator import generate, write_files
from tests.flow.test_stream_batch import CONFIG_HEAD
from tests.helpers import export, read_jsonl, replay_files, run_cli

TRAITS = """\
traits:
  - {name: spent, value: 'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases")'}
  - {name: purchases, value: 'count(event.eventType == "commerce.purchases")'}
  - {name: last_view, value: 'last(event.eventType, event.eventType == "commerce.productViews")'}
  - {name: views_3d, value: 'count(event.eventType == "commerce.productViews", within="3d")'}
segments:
  - {id: big, rule: 'profile.traits.spent > 100'}
  - {id: buyers, rule: 'profile.traits.purchases >= 1'}
destinations:
  - {name: projection, kind: profiles, path: profiles.jsonl}
"""
# Read when a document is written: a window's count moves with time alone, and no timer
# writes a document for it (no rule reads it), so it is compared at its own `as_of`.
WINDOWED = ("views_3d",)


def fold(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a reader keeps: per profile id, the document with the highest seq."""
    kept: dict[str, dict[str, Any]] = {}
    for doc in lines:
        held = kept.get(doc["profile_id"])
        if held is None or doc["as_of"]["seq"] > held["as_of"]["seq"]:
            kept[doc["profile_id"]] = doc
    return kept


def bare(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in ("updated_at", "as_of")}
    out["traits"] = {k: v for k, v in out["traits"].items() if k not in WINDOWED}
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_the_folded_projection_equals_the_export(tmp_path: Path, workers: int) -> None:
    write_files(generate(150, 2500, seed=11), tmp_path, junk=False)
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG_HEAD + TRAITS)
    state = tmp_path / "state"
    replay_files(config, state, workers=workers)
    lines = read_jsonl(tmp_path / "profiles.jsonl")
    seqs = [d["as_of"]["seq"] for d in lines]
    assert len(set(seqs)) == len(seqs)  # one number per document
    kept = fold(lines)
    profiles = {p["profile_id"]: p for p in export(config, state, tmp_path)}
    live = {pid: d for pid, d in kept.items() if "merged_into" not in d}
    assert set(live) == set(profiles)
    assert {pid: bare(d) for pid, d in live.items()} == {
        pid: bare(p) for pid, p in profiles.items()
    }
    assert any(d["traits"]["spent"] > 0 for d in live.values())
    # Merged-away profiles forward, through any chain, to a live profile that holds every
    # identity they had.
    forwards = {pid: d for pid, d in kept.items() if "merged_into" in d}
    assert forwards, "the generated people link devices to logins: some profiles merge"
    for doc in forwards.values():
        target = doc["merged_into"]
        while target in forwards:
            target = forwards[target]["merged_into"]
        held = profiles[target]["identities"]
        for namespace, values in doc["identities"].items():
            assert set(values) <= set(held.get(namespace, []))
    # A GDPR delete appends the person's deleted record, numbered above the rest.
    victim = next(iter(profiles.values()))
    namespace, values = next(iter(victim["identities"].items()))
    code = run_cli(
        "forget", "--config", config, "--state-dir", state, "--identity", f"{namespace}:{values[0]}"
    )
    assert code == 0
    after = fold(read_jsonl(tmp_path / "profiles.jsonl"))
    gone = after[victim["profile_id"]]
    assert gone["deleted"] is True and "identities" not in gone
    assert gone["as_of"]["seq"] > live[victim["profile_id"]]["as_of"]["seq"]


def test_a_trait_added_later_is_rebuilt_and_projected(tmp_path: Path) -> None:
    """A run without traits, then the same input with traits and a rule reading one: the
    rollout rebuilds them from the kept events, and every profile's new document has them."""
    write_files(generate(120, 1500, seed=4), tmp_path, junk=False)
    config = tmp_path / "cdp.yaml"
    before = "segments:\n  - {id: any, rule: 'exists(event.eventType != null)'}\n"
    config.write_text(CONFIG_HEAD + before)
    state = tmp_path / "state"
    replay_files(config, state)
    assert not (tmp_path / "profiles.jsonl").exists()
    config.write_text(CONFIG_HEAD + TRAITS)
    replay_files(config, state)
    kept = fold(read_jsonl(tmp_path / "profiles.jsonl"))
    profiles = {p["profile_id"]: p for p in export(config, state, tmp_path)}
    live = {pid: d for pid, d in kept.items() if "merged_into" not in d}
    assert set(live) == set(profiles)
    assert {pid: bare(d) for pid, d in live.items()} == {
        pid: bare(p) for pid, p in profiles.items()
    }
    assert sum(1 for p in profiles.values() if p["traits"]["purchases"] > 0) > 10
    assert sum(1 for p in profiles.values() if p["segments"].get("buyers")) > 10
