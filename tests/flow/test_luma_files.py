"""The Luma sample data through the whole pipeline from files (DESIGN §4 config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from operators.store import open_store
from tests.flow.test_identity_oracle import offline_clusters, records
from tests.helpers import (
    alternate,
    by_identity,
    export,
    luma_config,
    read_jsonl,
    replay_files,
    run_cli,
)

DANIEL_CRM = "112ca06ed53d3db37e4cea49cc45b71e"


def replay(tmp: Path, luma_dir: Path, workers: int) -> tuple[Path, Path, list[dict[str, Any]]]:
    config = luma_config(tmp, luma_dir)
    state = tmp / "state"
    changes = tmp / "changes.jsonl"
    replay_files(config, state, workers, changes)
    return config, state, read_jsonl(changes)


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def luma_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, luma_dir: Path
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp(f"luma{request.param}")
    config, state, changes = replay(tmp, luma_dir, request.param)
    return {
        "workers": request.param,
        "tmp": tmp,
        "config": config,
        "state": state,
        "changes": changes,
        "profiles": export(config, state, tmp),
    }


def expected_gold_buyers(luma_dir: Path) -> set[str]:
    """Independently: loyalty ids whose level is gold and that bought in the store."""
    loyalty = json.loads((luma_dir / "luma-loyalty.json").read_text())
    gold = {
        str(r["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"])
        for r in loyalty
        if r["_techmarketingdemos"]["loyalty"]["level"] == "gold"
    }
    bought = {
        str(json.loads(line)["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"])
        for line in (luma_dir / "luma-offline-purchases.json").read_text().splitlines()
        if line.strip()
    }
    return gold & bought


def test_daniel_wright_is_one_profile(luma_run: dict[str, Any]) -> None:
    daniel = by_identity(luma_run["profiles"], "CRMID", DANIEL_CRM)
    assert daniel["identities"]["LoyaltyId"] == ["5625458"]
    assert daniel["identities"]["Email"] == ["dwright@enablementadobe.com"]
    assert daniel["identities"]["Phone"] == ["2125555555"]
    # CRM (priority 20) wins over loyalty (priority 10): "Danny", and the CRM's city.
    assert daniel["attributes"]["person"]["name"]["firstName"] == "Danny"
    assert daniel["attributes"]["homeAddress"]["city"] == "Portland"
    assert daniel["attributes"]["_techmarketingdemos"]["loyalty"]["level"] == "gold"
    assert daniel["events"]["count"] == 1
    assert daniel["segments"]["gold-buyers"]["status"] == "entered"


def test_null_crm_ids_do_not_make_one_person(luma_run: dict[str, Any], luma_dir: Path) -> None:
    loyalty = json.loads((luma_dir / "luma-loyalty.json").read_text())
    orphans = {
        str(r["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"])
        for r in loyalty
        if r["_techmarketingdemos"]["systemIdentifier"]["crmId"] is None
    }
    assert len(orphans) == 218
    holders = [
        p for p in luma_run["profiles"] if set(p["identities"].get("LoyaltyId", [])) & orphans
    ]
    assert len(holders) == 218
    assert all(
        len(p["identities"]["LoyaltyId"]) == 1 and "CRMID" not in p["identities"] for p in holders
    )


def test_profile_counts_and_uniqueness(luma_run: dict[str, Any]) -> None:
    profiles = luma_run["profiles"]
    # 1000 CRM people + 1000 loyalty people, of whom exactly one (Daniel) is in both; store
    # purchases of unknown loyalty ids make their own profiles.
    crm = sum(1 for p in profiles if "CRMID" in p["identities"])
    assert crm == 1000 + 782 - 1
    for p in profiles:
        for ns in ("CRMID", "LoyaltyId", "Email"):
            assert len(p["identities"].get(ns, [])) <= 1, p["profile_id"]
    assert sum(p["events"]["count"] for p in profiles) == 1000


def test_profiles_are_the_connected_components_of_the_identities(
    luma_run: dict[str, Any],
) -> None:
    """Issue #3: the profile count equals the number of connected components of the non-null
    identities (the Luma data has no conflicting links), computed offline from the files."""
    config = yaml.safe_load(luma_run["config"].read_text())
    for src in config["sources"]:
        src["path"] = str((luma_run["config"].parent / src["path"]).resolve())
    unique = {ns["name"] for ns in config["namespaces"] if ns.get("unique")}
    expected, refused = offline_clusters(records(config, Path("/")), unique, 10**9)
    assert refused == 0
    engine = {
        frozenset((ns, v) for ns, vs in p["identities"].items() for v in vs)
        for p in luma_run["profiles"]
    }
    assert len(luma_run["profiles"]) == len(expected)
    assert engine == expected


def test_gold_buyers_match_an_independent_computation(
    luma_run: dict[str, Any], luma_dir: Path
) -> None:
    members = {
        p["identities"]["LoyaltyId"][0]
        for p in luma_run["profiles"]
        if p["segments"].get("gold-buyers", {}).get("status") == "entered"
    }
    assert members == expected_gold_buyers(luma_dir)
    assert members, "the sample has gold buyers"


def test_audience_changes_are_well_formed(luma_run: dict[str, Any]) -> None:
    changes = luma_run["changes"]
    assert changes
    assert alternate(changes, in_order=luma_run["workers"] == 1)
    assert len({c["id"] for c in changes}) == len(changes)
    for c in changes:
        assert set(c) == {
            "id",
            "segment_id",
            "status",
            "profile_id",
            "identities",
            "event_time",
            "emitted_at",
            "reason",
            "sequence",
        }
        assert c["reason"].split(":")[0] in {"event", "profile", "merge", "timer"}
    entered = [c for c in changes if c["segment_id"] == "gold-buyers" and c["status"] == "entered"]
    daniel = [c for c in entered if "5625458" in c["identities"].get("LoyaltyId", [])]
    assert daniel and daniel[-1]["reason"] == "event:e722bbcc-9653-4715-8ff6-545b314061f2"
    assert daniel[-1]["event_time"] == "2020-08-11T00:00:00Z"


def test_file_destination_gets_the_same_changes(luma_run: dict[str, Any]) -> None:
    dest = read_jsonl(luma_run["tmp"] / "luma-audiences.jsonl")
    assert sorted(c["id"] for c in dest) == sorted(c["id"] for c in luma_run["changes"])


def test_replaying_again_changes_nothing(luma_run: dict[str, Any]) -> None:
    tmp, config, state = luma_run["tmp"], luma_run["config"], luma_run["state"]
    workers = str(luma_run["workers"])
    for attempt in ("resume", "reread"):
        if attempt == "reread":
            # Without Bytewax's snapshot every record comes again: the applied offsets in
            # RocksDB must recognise all of them. With no snapshot to say what reached the
            # destinations, the earlier changes are sent again (at-least-once): the same ids.
            shutil.rmtree(state / "recovery")
        again = tmp / f"again-{attempt}.jsonl"
        replay_files(config, state, int(workers), again)
        resent = read_jsonl(again)
        if attempt == "resume":
            assert resent == []
        else:
            assert sorted(c["id"] for c in resent) == sorted(c["id"] for c in luma_run["changes"])
        assert export(config, state, tmp, f"export-{attempt}.jsonl") == luma_run["profiles"]


def test_state_refuses_another_worker_count(luma_run: dict[str, Any]) -> None:
    other = "2" if luma_run["workers"] == 1 else "1"
    code = run_cli(
        "replay",
        "--config",
        luma_run["config"],
        "--files",
        "--state-dir",
        luma_run["state"],
        "--workers",
        other,
    )
    assert code == 2


def test_profile_and_identity_commands(
    luma_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state = luma_run["config"], luma_run["state"]
    assert (
        run_cli(
            "profile",
            "--config",
            config,
            "--state-dir",
            state,
            "--identity",
            "Email:DWright@EnablementAdobe.com",
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["identities"]["CRMID"] == [DANIEL_CRM]
    assert (
        run_cli(
            "identity", "--config", config, "--state-dir", state, "--identity", "LoyaltyId:5625458"
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["canonical"] == f"CRMID:{DANIEL_CRM}"
    assert any(link["record"].startswith("loyalty:0:") for link in report["links"])
    assert (
        run_cli(
            "profile",
            "--config",
            config,
            "--state-dir",
            state,
            "--identity",
            "Email:nobody@example.com",
        )
        == 1
    )
    assert run_cli("segments", "sizes", "--config", config, "--state-dir", state) == 0
    assert "gold-buyers" in capsys.readouterr().out


def test_explain_command(luma_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    config, state = luma_run["config"], luma_run["state"]
    code = run_cli(
        "explain",
        "--config",
        config,
        "--state-dir",
        state,
        "--identity",
        "LoyaltyId:5625458",
        "--segment",
        "gold-buyers",
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert text.startswith("IN segment 'gold-buyers'")
    assert (
        'profile._techmarketingdemos.loyalty.level == "gold"  =  "gold" == "gold"  ->  true' in text
    )
    code = run_cli(
        "explain",
        "--config",
        config,
        "--state-dir",
        state,
        "--identity",
        "LoyaltyId:5625458",
        "--segment",
        "big-spenders",
    )
    assert code == 0
    assert "=  252.19 > 250  ->  true" in capsys.readouterr().out
    # A silver member is not a gold buyer: exit status 3, and the failing test is shown.
    code = run_cli(
        "explain",
        "--config",
        config,
        "--state-dir",
        state,
        "--identity",
        "LoyaltyId:5667440",
        "--segment",
        "gold-buyers",
    )
    assert code == 3
    text = capsys.readouterr().out
    assert text.startswith("NOT IN segment 'gold-buyers'")
    assert '"silver" == "gold"  ->  false' in text
    assert (
        run_cli(
            "explain",
            "--config",
            config,
            "--state-dir",
            state,
            "--identity",
            "LoyaltyId:5625458",
            "--segment",
            "nope",
        )
        == 2
    )


def test_forget_removes_every_trace_and_emits_exits(
    tmp_path: Path, luma_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state, _ = replay(tmp_path, luma_dir, 1)
    dest = tmp_path / "luma-audiences.jsonl"
    before = len(read_jsonl(dest))
    code = run_cli(
        "forget",
        "--config",
        config,
        "--state-dir",
        state,
        "--identity",
        "Email:dwright@enablementadobe.com",
    )
    assert code == 0
    exits = read_jsonl(dest)[before:]
    assert {(c["segment_id"], c["status"], c["reason"]) for c in exits} >= {
        ("gold-buyers", "exited", "delete")
    }
    assert all(c["status"] == "exited" and c["reason"] == "delete" for c in exits)
    profiles = export(config, state, tmp_path, "after-forget.jsonl")
    text = (tmp_path / "after-forget.jsonl").read_text()
    for trace in (DANIEL_CRM, "5625458", "dwright@enablementadobe.com", "2125555555"):
        assert trace not in text
    assert len(profiles) > 0
    assert (
        run_cli(
            "profile", "--config", config, "--state-dir", state, "--identity", "LoyaltyId:5625458"
        )
        == 1
    )
    # Replaying the same (older) records does not bring him back: the tombstones hold even
    # when every record is read and applied again (no Bytewax snapshot, no applied offsets).
    shutil.rmtree(state / "recovery")
    store = open_store(state)
    store.write({key: None for key, _ in store.scan(b"o/")})
    store.close()
    resent = tmp_path / "resent.jsonl"
    replay_files(config, state, 1, resent)
    export(config, state, tmp_path, "after-replay.jsonl")
    assert DANIEL_CRM not in (tmp_path / "after-replay.jsonl").read_text()
    # Other people's earlier changes are sent again (no snapshot), never his.
    assert resent.read_text() and "dwright@enablementadobe.com" not in resent.read_text()
    capsys.readouterr()
