"""What the kept history bounds (DESIGN §13): an audience added later is rebuilt from the events
each profile kept (`profile.history`). A rule whose window is inside the retention gets the
batch answer; one that reads further back is evaluated on what is kept and says so in
`cdp segments sizes`, `cdp explain` and `cdp segments preview` — never a silent 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main as cdp
from flows.generator import generate, write_files
from tests.batch_oracle import evaluate, event_is
from tests.flow.test_stream_batch import CONFIG_HEAD, SEGMENTS, segments_yaml
from tests.helpers import export, replay_files

VIEW = event_is("commerce.productViews")
EVER = 'count(event.eventType == "commerce.productViews") >= 3'
RECENT = 'count(event.eventType == "commerce.productViews", within="2d") >= 1'


def _config(data: Path, name: str, history: str, added: bool) -> Path:
    text = CONFIG_HEAD + segments_yaml(SEGMENTS[:2])
    if added:
        text += f"  - {{id: views-ever, rule: {json.dumps(EVER)}}}\n"
        text += f"  - {{id: views-2d, rule: {json.dumps(RECENT)}}}\n"
    text += f"profile: {{history: {history}}}\n"
    path = data / f"{name}.yaml"
    path.write_text(text)
    return path


def _sizes(capsys: pytest.CaptureFixture[str], config: Path, state: Path) -> dict[str, str]:
    assert cdp(["segments", "sizes", "--config", str(config), "--state-dir", str(state)]) == 0
    out: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        seg, _, rest = line.partition("  ")
        out[seg] = rest.strip()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history-limits")
    write_files(generate(200, 3000, seed=11), path, junk=False)  # two weeks of events
    return path


def _edited(data: Path, name: str, history: str) -> dict[str, Any]:
    state = data / f"state-{name}"
    replay_files(_config(data, f"{name}-a", history, added=False), state)
    config = _config(data, f"{name}-b", history, added=True)
    replay_files(config, state)
    profiles = export(config, state, data)
    oracle = evaluate(
        config,
        profiles,
        {
            "views-ever": lambda v: v.count(VIEW) >= 3,
            "views-2d": lambda v: v.count(VIEW, "2d") >= 1,
        },
    )
    members: dict[str, set[str]] = {"views-ever": set(), "views-2d": set()}
    for p in profiles:
        for seg, ids in members.items():
            if p["segments"].get(seg, {}).get("status") == "entered":
                ids.add(p["profile_id"])
    return {"config": config, "state": state, "oracle": oracle, "members": members}


def test_a_window_inside_the_retention_is_exact_and_one_beyond_says_so(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    run = _edited(data, "5d", "{max_age: 5d}")
    oracle = run["oracle"].members
    assert run["members"]["views-2d"] == oracle["views-2d"] and oracle["views-2d"]
    # Unbounded: only what the last 5 days kept counts, so fewer members, never more.
    assert run["members"]["views-ever"] < oracle["views-ever"]
    sizes = _sizes(capsys, run["config"], run["state"])
    assert "history from" in sizes["views-ever"]
    assert "history from" not in sizes["views-2d"]
    # A profile that lost members to the retention is explained as such.
    missing = sorted(oracle["views-ever"] - run["members"]["views-ever"])[0]
    profiles = {p["profile_id"]: p for p in export(run["config"], run["state"], data)}
    namespace, values = next(iter(profiles[missing]["identities"].items()))
    args = ["explain", "--config", str(run["config"]), "--state-dir", str(run["state"])]
    code = cdp([*args, "--identity", f"{namespace}:{values[0]}", "--segment", "views-ever"])
    out = capsys.readouterr().out
    assert code == 3 and "history from 2026-11-" in out, out
    # Preview says how many profiles it evaluated on partial history.
    base = ["segments", "preview", "--config", str(run["config"])]
    assert cdp([*base, "--state-dir", str(run["state"]), "--rule", EVER, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["partial_history"]["profiles"] > 0
    assert found["partial_history"]["history_from"].startswith("2026-11-")


def test_a_long_retention_gives_the_batch_answer(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    run = _edited(data, "90d", "{max_age: 90d}")
    oracle = run["oracle"].members
    assert run["members"] == {k: oracle[k] for k in run["members"]}
    sizes = _sizes(capsys, run["config"], run["state"])
    assert all("history from" not in v for v in sizes.values())


def test_with_the_history_off_an_added_rule_says_it_saw_nothing(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    run = _edited(data, "off", "{max_events: 0}")
    assert run["members"]["views-2d"] == set()
    sizes = _sizes(capsys, run["config"], run["state"])
    assert "history from" in sizes["views-2d"] and "history from" in sizes["views-ever"]
