"""Issue #14's "Done when" on the Luma data: `cdp replay --files` with config/luma.yaml, then
with an edited config into the same state. The edit adds `silver` (a profile attribute),
`purchases-twice` and `many-items` (over events and a field no earlier rule read), changes
`big-spenders` from `> 250` to `> 100`, and removes `hoodie-buyers`.

Expected answers are computed without the engine: silver from the loyalty file, the rest from
the batch evaluator (tests/batch_oracle.py) over the whole input. Before B runs, `cdp segments
preview` sizes each new or edited rule: the rollout then gives exactly those sizes.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.batch_oracle import View, eq, evaluate, event_is, is_null, isin, startswith, values
from tests.flow.test_stream_batch import members_of
from tests.helpers import alternate, export, luma_config, read_jsonl, replay_files, run_cli

LEVEL = "_techmarketingdemos.loyalty.level"
PURCHASE = event_is("commerce.purchases")
DANIEL_LOYALTY = "5625458"
REMOVED = "hoodie-buyers"

ADDED = {
    "silver": f'profile.{LEVEL} == "silver"',
    "purchases-twice": 'count(event.eventType == "commerce.purchases") >= 2',
    "many-items": 'sum(event.productListItems.quantity, event.eventType == "commerce.purchases")'
    " >= 5",
}
BIG_SPENDERS_B = (
    'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases") > 100'
)


def _batch_rules() -> dict[str, Any]:
    """Config B's segments, written by hand for the oracle."""

    def reachable_gold(v: View) -> bool:
        level = isin(v.profile(LEVEL), ["gold", "platinum"])
        return level and not is_null(v.profile("personalEmail.address"))

    return {
        "gold-buyers": lambda v: eq(v.profile(LEVEL), "gold") and v.exists(PURCHASE),
        "big-spenders": lambda v: v.sum("commerce.order.priceTotal", PURCHASE) > 100,
        "reachable-gold": reachable_gold,
        "silver": lambda v: eq(v.profile(LEVEL), "silver"),
        "purchases-twice": lambda v: v.count(PURCHASE) >= 2,
        "many-items": lambda v: v.sum("productListItems.quantity", PURCHASE) >= 5,
    }


def _hoodie(v: View) -> bool:
    return v.exists(lambda e: startswith(values(e, "productListItems.SKU"), "LLMH"))


def edited_config(config_a: Path) -> Path:
    raw = yaml.safe_load(config_a.read_text())
    segments = [s for s in raw["segments"] if s["id"] != REMOVED]
    for seg in segments:
        if seg["id"] == "big-spenders":
            seg["rule"] = BIG_SPENDERS_B
    segments += [{"id": sid, "rule": rule} for sid, rule in ADDED.items()]
    raw["segments"] = segments
    path = config_a.parent / "luma-edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def silver_loyalty_ids(luma_dir: Path) -> set[str]:
    loyalty = json.loads((luma_dir / "luma-loyalty.json").read_text())
    return {
        str(r["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"])
        for r in loyalty
        if r["_techmarketingdemos"]["loyalty"]["level"] == "silver"
    }


def reason(change: dict[str, Any]) -> str:
    return str(change["reason"]).split(":")[0]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def edited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, luma_dir: Path
) -> dict[str, Any]:
    workers = request.param
    tmp = tmp_path_factory.mktemp(f"luma-edits{workers}")
    config_a = luma_config(tmp, luma_dir)
    config_b = edited_config(config_a)
    state = tmp / "state"
    replay_files(config_a, state, workers, tmp / "changes-a.jsonl")
    profiles_a = export(config_a, state, tmp, "export-a.jsonl")
    # Before B runs: `cdp segments preview` of each new rule (config A never had it), and of
    # each edited segment of B (not rolled out yet).
    previews = {
        **{sid: _preview(config_a, state, "--rule", rule) for sid, rule in ADDED.items()},
        "big-spenders": _preview(config_b, state, "--segment", "big-spenders"),
    }
    replay_files(config_b, state, workers, tmp / "changes-b.jsonl")
    profiles_b = export(config_b, state, tmp, "export-b.jsonl")
    return {
        "workers": workers,
        "tmp": tmp,
        "config_a": config_a,
        "config_b": config_b,
        "state": state,
        "profiles_a": profiles_a,
        "profiles_b": profiles_b,
        "changes_a": read_jsonl(tmp / "changes-a.jsonl"),
        "changes_b": read_jsonl(tmp / "changes-b.jsonl"),
        "oracle": evaluate(config_b, profiles_b, _batch_rules()),
        "previews": previews,
    }


def _preview(config: Path, state: Path, *what: str) -> dict[str, Any]:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")  # the CLI writes its JSON as bytes
    with redirect_stdout(out):
        code = run_cli(
            "segments", "preview", "--config", config, "--state-dir", state, "--json", *what
        )
    out.flush()
    text = raw.getvalue().decode()
    assert code == 0, text
    found: dict[str, Any] = json.loads(text)
    return found


def test_silver_is_the_silver_members_of_the_loyalty_file(
    edited: dict[str, Any], luma_dir: Path
) -> None:
    members = [
        p
        for p in edited["profiles_b"]
        if p["segments"].get("silver", {}).get("status") == "entered"
    ]
    got = [lid for p in members for lid in p["identities"].get("LoyaltyId", [])]
    expected = silver_loyalty_ids(luma_dir)
    print(f"\nsilver: {len(members)} members, {len(expected)} silver rows in the loyalty file")
    assert len(got) == len(members) == len(set(got))
    assert set(got) == expected


def test_memberships_equal_the_batch_evaluation(edited: dict[str, Any]) -> None:
    oracle = edited["oracle"]
    assert oracle.unplaced == []
    stream = members_of(edited["profiles_b"])
    print()
    wrong = {}
    for sid, want in sorted(oracle.members.items()):
        got = stream.get(sid, set())
        print(f"  {sid:<16} stream {len(got):>4}  batch {len(want):>4}")
        if got != want:
            wrong[sid] = (len(got - want), len(want - got))
    assert wrong == {}
    before = members_of(edited["profiles_a"])
    assert len(before["big-spenders"]) < len(oracle.members["big-spenders"])
    assert oracle.members["many-items"], "a rule over a field no earlier rule read has members"


def test_sizes_show_the_edit(edited: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = run_cli(
        "segments", "sizes", "--config", edited["config_b"], "--state-dir", edited["state"]
    )
    assert code == 0
    sizes = {
        parts[0]: int(parts[1])
        for parts in (line.split() for line in capsys.readouterr().out.splitlines())
        if len(parts) >= 2 and parts[1].isdigit()
    }
    assert sizes == {sid: len(m) for sid, m in edited["oracle"].members.items()}


def test_hoodie_buyers_are_gone_and_each_was_told(edited: dict[str, Any], tmp_path: Path) -> None:
    former = members_of(edited["profiles_a"])[REMOVED]
    # The same people the batch evaluator finds in config A's rule.
    assert (
        former
        == evaluate(edited["config_a"], edited["profiles_a"], {REMOVED: _hoodie}).members[REMOVED]
    )
    assert former
    assert [p["profile_id"] for p in edited["profiles_b"] if REMOVED in p["segments"]] == []
    told = [c for c in edited["changes_b"] if c["segment_id"] == REMOVED]
    assert all(c["status"] == "exited" and reason(c) == "removed" for c in told)
    assert Counter(c["profile_id"] for c in told) == Counter(former)
    # The configured file destination got the same exits.
    dest = read_jsonl(edited["tmp"] / "luma-audiences.jsonl")
    assert sorted(
        c["id"] for c in dest if c["segment_id"] == REMOVED and c["status"] == "exited"
    ) == sorted(c["id"] for c in told)


def test_the_second_run_sends_only_the_edit(edited: dict[str, Any]) -> None:
    """The same input: every change of the second run is the rollout of the edit."""
    changes = edited["changes_b"]
    assert {c["segment_id"] for c in changes} <= {*ADDED, "big-spenders", REMOVED}
    assert {reason(c) for c in changes if c["segment_id"] != REMOVED} == {"definition"}
    before = members_of(edited["profiles_a"])
    after = members_of(edited["profiles_b"])
    for sid in [*ADDED, "big-spenders"]:
        old, new = before.get(sid, set()), after.get(sid, set())
        want = {(p, "entered") for p in new - old} | {(p, "exited") for p in old - new}
        got = [(c["profile_id"], c["status"]) for c in changes if c["segment_id"] == sid]
        assert sorted(got) == sorted(want), sid


def test_changes_of_both_runs_alternate_and_fold_to_the_export(edited: dict[str, Any]) -> None:
    changes = edited["changes_a"] + edited["changes_b"]
    assert alternate(changes, in_order=edited["workers"] == 1)
    assert len({c["id"] for c in changes}) == len(changes)
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for c in changes:
        key = (c["profile_id"], c["segment_id"])
        if key not in last or c["sequence"] > last[key]["sequence"]:
            last[key] = c
    folded = {k for k, c in last.items() if c["status"] == "entered"}
    exported = {
        (pid, sid) for sid, pids in members_of(edited["profiles_b"]).items() for pid in pids
    }
    assert folded == exported


def test_explain_counts_daniels_purchases(
    edited: dict[str, Any], luma_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue saw `count(...) = 0 >= 2 -> false` for Daniel Wright, who bought in the store:
    the count of a rule added later is rebuilt from his history."""
    bought = sum(
        1
        for line in (luma_dir / "luma-offline-purchases.json").read_text().splitlines()
        if line.strip()
        and str(json.loads(line)["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"])
        == DANIEL_LOYALTY
    )
    assert bought >= 1
    capsys.readouterr()
    code = run_cli(
        "explain",
        "--config",
        edited["config_b"],
        "--state-dir",
        edited["state"],
        "--identity",
        f"LoyaltyId:{DANIEL_LOYALTY}",
        "--segment",
        "purchases-twice",
    )
    text = capsys.readouterr().out
    assert code == (0 if bought >= 2 else 3), text
    assert f"=  {bought} >= 2  ->  {'true' if bought >= 2 else 'false'}" in text, text


def test_a_destination_of_the_removed_audience_is_told(tmp_path: Path, luma_dir: Path) -> None:
    """A destination that took only hoodie-buyers; B removes the audience, and the destination
    (which may no longer name it) takes gold-buyers now. It gets one `exited`/`removed` per
    member it was sent."""
    config_a = luma_config(tmp_path, luma_dir)
    raw = yaml.safe_load(config_a.read_text())
    hoodies = tmp_path / "hoodies.jsonl"
    raw["destinations"].append(
        {"name": "hoodies", "kind": "file", "path": str(hoodies), "segments": [REMOVED]}
    )
    config_a.write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["segments"] = [s for s in raw["segments"] if s["id"] != REMOVED]
    raw["destinations"][-1]["segments"] = ["gold-buyers"]
    config_b = tmp_path / "b.yaml"
    config_b.write_text(yaml.safe_dump(raw, sort_keys=False))
    replay_files(config_a, tmp_path / "state", 1)
    sent = read_jsonl(hoodies)
    members = {c["profile_id"] for c in sent if c["status"] == "entered"}
    assert len(members) > 100
    replay_files(config_b, tmp_path / "state", 1)
    told = [c for c in read_jsonl(hoodies)[len(sent) :] if c["segment_id"] == REMOVED]
    assert Counter(c["profile_id"] for c in told) == Counter(members)
    assert all(c["status"] == "exited" and c["reason"] == "removed" for c in told)


def test_a_forgotten_person_stays_out_of_a_rollout(
    tmp_path: Path, luma_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cdp forget` between A and B: the rollout rebuilds the new rules from the kept history,
    and there is none of him: no change and no exported profile carries his identities."""
    config_a = luma_config(tmp_path, luma_dir)
    config_b = edited_config(config_a)
    state = tmp_path / "state"
    replay_files(config_a, state, 1)
    identity = f"LoyaltyId:{DANIEL_LOYALTY}"
    assert (
        run_cli("forget", "--config", config_a, "--state-dir", state, "--identity", identity) == 0
    )
    replay_files(config_b, state, 1, tmp_path / "changes-b.jsonl")
    changes = (tmp_path / "changes-b.jsonl").read_text()
    exported = export(config_b, state, tmp_path, "export-b.jsonl")
    assert changes and exported
    for trace in (DANIEL_LOYALTY, "dwright@enablementadobe.com"):
        assert trace not in changes
        assert trace not in (tmp_path / "export-b.jsonl").read_text()
    capsys.readouterr()
    code = run_cli("profile", "--config", config_b, "--state-dir", state, "--identity", identity)
    assert code == 1


def test_preview_before_the_edit_sized_what_the_edit_did(edited: dict[str, Any]) -> None:
    """Done when: `cdp segments preview` sizes a rule never configured as the batch does; and
    the edit, once rolled out, has the members the preview announced."""
    members = members_of(edited["profiles_b"])
    for sid, found in edited["previews"].items():
        want = edited["oracle"].members[sid]
        assert found["size"] == len(want) == len(members.get(sid, set())), sid
        assert {m["profile_id"] for m in found["sample"]} <= want, sid
        assert len(found["sample"]) == min(10, len(want)), sid
