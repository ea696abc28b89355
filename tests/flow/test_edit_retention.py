"""An edit on a state that keeps a short history (issue #14): `profile.history.max_age: 3d` over
14 days of generated events. Config B, rolled out over A's state:
- changes the threshold of a rule whose input A kept (all time): exact, whatever the history;
- adds a rule with a window inside the retention: exact (the history holds all it reads);
- adds an all-time rule over an input A never kept: evaluated on the kept events, so between
  the batch answer over the last 3 days and over all time, and `cdp segments sizes` and
  `cdp explain` say "history from" — never a silent answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.generator import generate, write_files
from tests.batch_oracle import evaluate, event_is
from tests.flow.test_edits import CONFIG_A, CONFIG_B
from tests.flow.test_stream_batch import CONFIG_HEAD, Segment, members_of, segments_yaml
from tests.helpers import export, replay_files, run_cli

PEOPLE = 200
EVENTS = 3000
SEED = 5
KEEP = "3d"
VIEW = event_is("commerce.productViews")
ADD = event_is("commerce.productListAdds")

MANY_VIEWS_A = Segment(
    "many-views", 'count(event.eventType == "commerce.productViews") >= 12', lambda v: False
)
MANY_VIEWS_B = Segment(
    "many-views",
    'count(event.eventType == "commerce.productViews") >= 5',
    lambda v: v.count(VIEW) >= 5,
)
ADDS_2D = Segment(
    "adds-2d",
    'count(event.eventType == "commerce.productListAdds", within="2d") >= 1',
    lambda v: v.count(ADD, within="2d") >= 1,
)
ADDS_EVER = Segment(
    "adds-ever",
    'count(event.eventType == "commerce.productListAdds") >= 3',
    lambda v: v.count(ADD) >= 3,
)


def _config(path: Path, segments: tuple[Segment, ...]) -> Path:
    history = f"profile: {{history: {{max_age: {KEEP}}}}}\n"
    path.write_text(CONFIG_HEAD + segments_yaml(segments) + history)
    return path


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("edit-retention")
    write_files(generate(PEOPLE, EVENTS, seed=SEED), tmp, junk=False)
    config_a = _config(tmp / "a.yaml", (MANY_VIEWS_A,))
    config_b = _config(tmp / "b.yaml", (MANY_VIEWS_B, ADDS_2D, ADDS_EVER))
    replay_files(config_a, tmp / "state", 1)
    replay_files(config_b, tmp / "state", 1)
    profiles = export(config_b, tmp / "state", tmp)
    rules = {s.id: s.batch for s in (MANY_VIEWS_B, ADDS_2D, ADDS_EVER)}
    oracle = evaluate(config_b, profiles, rules)
    # The same rules over the last KEEP of events only: the least a kept history holds.
    recent = {
        **rules,
        "adds-ever": lambda v: v.count(ADD, within=KEEP) >= 3,
    }
    return {
        "config": config_b,
        "state": tmp / "state",
        "profiles": profiles,
        "members": members_of(profiles),
        "oracle": oracle,
        "recent": evaluate(config_b, profiles, recent),
    }


def test_a_rule_over_a_kept_input_is_exact(edited: dict[str, Any]) -> None:
    assert edited["members"]["many-views"] == edited["oracle"].members["many-views"]


def test_a_window_inside_the_retention_is_exact(edited: dict[str, Any]) -> None:
    assert edited["members"]["adds-2d"] == edited["oracle"].members["adds-2d"]
    assert edited["members"]["adds-2d"]


def test_a_rule_reaching_past_the_history_counts_what_is_kept(edited: dict[str, Any]) -> None:
    got = edited["members"].get("adds-ever", set())
    least, most = edited["recent"].members["adds-ever"], edited["oracle"].members["adds-ever"]
    print(f"\nadds-ever: {len(got)} members; last {KEEP} only {len(least)}, all time {len(most)}")
    assert least <= got <= most
    assert least != most, "the retention hides some of the answer"


def test_sizes_and_explain_say_history_from(
    edited: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state = edited["config"], edited["state"]
    capsys.readouterr()
    assert run_cli("segments", "sizes", "--config", config, "--state-dir", state) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert "history from" in lines["adds-ever"], lines
    assert "history from" not in lines["many-views"], lines
    assert "history from" not in lines["adds-2d"], lines
    # Somebody whose all-time answer differs from the kept one: explain says why.
    hidden = sorted(edited["oracle"].members["adds-ever"] - edited["members"]["adds-ever"])
    assert hidden
    person = next(p for p in edited["profiles"] if p["profile_id"] == hidden[0])
    ns, values = sorted(person["identities"].items())[0]
    code = run_cli(
        "explain", "--config", config, "--state-dir", state,
        "--identity", f"{ns}:{values[0]}", "--segment", "adds-ever",
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 3, text
    assert "history from" in text, text


def test_a_state_built_without_history_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A built with `profile.history.max_events: 0` (no events kept), then B with the history
    on: rules over inputs A kept are exact; rules over new inputs are evaluated on what is kept
    (nothing before B's run) and `cdp segments sizes` says "history from" for each of them."""
    write_files(generate(PEOPLE, EVENTS, seed=SEED), tmp_path, junk=False)
    config_a = tmp_path / "a.yaml"
    config_a.write_text(
        CONFIG_HEAD + segments_yaml(CONFIG_A) + "profile: {history: {max_events: 0}}\n"
    )
    config_b = tmp_path / "b.yaml"
    config_b.write_text(CONFIG_HEAD + segments_yaml(CONFIG_B))
    replay_files(config_a, tmp_path / "state", 1)
    replay_files(config_b, tmp_path / "state", 1)
    profiles = export(config_b, tmp_path / "state", tmp_path)
    oracle = evaluate(config_b, profiles, {s.id: s.batch for s in CONFIG_B})
    members = members_of(profiles)
    kept = {"gold", "buyers", "engaged-3d", "big-spenders", "buyers-not-big", "silver"}
    assert {sid: members.get(sid, set()) for sid in kept} == {
        sid: oracle.members[sid] for sid in kept
    }
    capsys.readouterr()
    assert (
        run_cli("segments", "sizes", "--config", config_b, "--state-dir", tmp_path / "state") == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    noted = {line.split()[0] for line in lines if "history from" in line}
    assert noted == {s.id for s in CONFIG_B} - kept
