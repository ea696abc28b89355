"""`cdp segments preview` (DESIGN §13): a rule never configured, sized over a replayed state as it
is, matches the independent batch evaluator (tests/batch_oracle.py) over the whole input; the
sample is of real members; the state is not changed; a bad rule is a clear error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main as cdp
from flows.generator import generate, write_files
from tests.batch_oracle import evaluate, event_is, ge
from tests.flow.test_stream_batch import CONFIG_HEAD, SEGMENTS, segments_yaml
from tests.helpers import export, replay_files

CHECKOUT = event_is("commerce.checkouts")
VIEW = event_is("commerce.productViews")
PURCHASE = event_is("commerce.purchases")

# Rules no configured segment reads (their aggregates are not in the state): rebuilt from history.
NEW_RULES = {
    "two-checkouts": (
        'count(event.eventType == "commerce.checkouts") >= 2',
        lambda v: v.count(CHECKOUT) >= 2,
    ),
    "views-2d": (
        'count(event.eventType == "commerce.productViews", within="2d") >= 4',
        lambda v: v.count(VIEW, within="2d") >= 4,
    ),
    "spent-150": (
        'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases") >= 150',
        lambda v: ge(v.sum("commerce.order.priceTotal", PURCHASE), 150),
    ),
}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("preview-data")
    write_files(generate(200, 3000, seed=11), data, junk=False)
    config = data / "cdp.yaml"
    config.write_text(CONFIG_HEAD + segments_yaml(SEGMENTS[:6]))
    replay_files(config, data / "state")
    profiles = export(config, data / "state", data)
    rules = {name: batch for name, (_, batch) in NEW_RULES.items()}
    oracle = evaluate(config, profiles, rules)
    return {"config": config, "state": data / "state", "oracle": oracle, "profiles": profiles}


def _preview(capsys: pytest.CaptureFixture[str], state: dict[str, Any], *args: str) -> Any:
    code = cdp(
        [
            "segments",
            "preview",
            "--config",
            str(state["config"]),
            "--state-dir",
            str(state["state"]),
            "--json",
            *args,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def _digest(state_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((state_dir / "rocksdb").glob("*.sst")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", list(NEW_RULES))
def test_a_rule_never_configured_is_sized_as_the_batch_evaluation(
    capsys: pytest.CaptureFixture[str], state: dict[str, Any], name: str
) -> None:
    rule, _ = NEW_RULES[name]
    expected = state["oracle"].members[name]
    assert expected, "the rule must match someone for the check to mean anything"
    found = _preview(capsys, state, "--rule", rule, "--sample", "5")
    assert found["size"] == len(expected)
    assert found["profiles"] == len(state["profiles"])
    assert found["partial_history"] == {"profiles": 0, "history_from": None}
    assert len(found["sample"]) == min(5, len(expected))
    assert {m["profile_id"] for m in found["sample"]} <= expected
    by_id = {p["profile_id"]: p["identities"] for p in state["profiles"]}
    for member in found["sample"]:
        assert member["identities"] == by_id[member["profile_id"]]


def test_a_configured_segment_is_sized_as_its_members(
    capsys: pytest.CaptureFixture[str], state: dict[str, Any]
) -> None:
    seg = SEGMENTS[0]
    members = {
        p["profile_id"]
        for p in state["profiles"]
        if p["segments"].get(seg.id, {}).get("status") == "entered"
    }
    found = _preview(capsys, state, "--segment", seg.id)
    assert found["size"] == len(members) and members


def test_the_state_is_not_changed(
    capsys: pytest.CaptureFixture[str], state: dict[str, Any]
) -> None:
    before = _digest(state["state"])
    _preview(capsys, state, "--rule", NEW_RULES["two-checkouts"][0])
    assert _digest(state["state"]) == before


def test_a_bad_rule_or_segment_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], state: dict[str, Any]
) -> None:
    base = ["segments", "preview", "--config", str(state["config"])]
    base += ["--state-dir", str(state["state"])]
    assert cdp([*base, "--rule", 'count(event.eventType == "x") >']) == 2
    err = capsys.readouterr().err
    assert "the rule, column 32: unexpected end of rule" in err and "__preview__" not in err
    assert cdp([*base, "--segment", "nope"]) == 2
    assert "no segment 'nope' in the config" in capsys.readouterr().err


def test_the_text_output_names_size_and_sample(
    capsys: pytest.CaptureFixture[str], state: dict[str, Any]
) -> None:
    rule = NEW_RULES["two-checkouts"][0]
    base = ["segments", "preview", "--config", str(state["config"])]
    assert cdp([*base, "--state-dir", str(state["state"]), "--rule", rule]) == 0
    out = capsys.readouterr().out
    size = len(state["oracle"].members["two-checkouts"])
    assert f"estimated size: {size}\n" in out
    assert f"sample ({min(10, size)} of {size}):" in out
