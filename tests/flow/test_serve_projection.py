"""`cdp serve` over the projection the worker writes (`cdp replay --files` with a `profiles`
destination): every identity of every profile of `cdp export` finds that profile, merged-away
ids forward, decisions read the traits and memberships the worker computed, and `cdp forget`
reaches the server. Skipped until the `profiles` destination (the projection side of issue
#15) is in."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from config.settings import DestinationSettings
from flows.generator import generate, write_files
from tests.flow.test_stream_batch import CONFIG_HEAD
from tests.helpers import export, read_jsonl, replay_files, run_cli
from tests.serve_helpers import KEYS, server, settings_of, wait_for

pytestmark = pytest.mark.skipif(
    "profiles" not in get_args(DestinationSettings.model_fields["kind"].annotation),
    reason="needs the profiles destination (issue #15, projection)",
)

TAIL = """\
traits:
  - {name: spent, value: 'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases")'}
segments:
  - {id: buyers, rule: 'exists(event.eventType == "commerce.purchases")'}
destinations:
  - {name: projection, kind: profiles, path: profiles.jsonl}
serve:
  keys:
    - {name: all, key_env: CDP_TEST_ALL, scopes: [read, decide]}
offers:
  - placement: home
    offers:
      - {id: big, rule: 'profile.traits.spent > 100', priority: 2}
      - {id: buyer, rule: 'in_segment("buyers")', priority: 1}
      - {id: hello}
"""
ALL = {"Authorization": f"Bearer {KEYS['CDP_TEST_ALL']}"}


def test_serve_answers_from_the_projection_the_worker_wrote(tmp_path: Path) -> None:
    write_files(generate(120, 2000, seed=5), tmp_path, junk=False)
    config = tmp_path / "cdp.yaml"
    config.write_text(CONFIG_HEAD + TAIL)
    state = tmp_path / "state"
    replay_files(config, state)
    profiles = {p["profile_id"]: p for p in export(config, state, tmp_path)}
    forwards = [d for d in read_jsonl(tmp_path / "profiles.jsonl") if "merged_into" in d]
    with server(settings_of(config), config) as client:
        for pid, profile in profiles.items():
            for namespace, values in profile["identities"].items():
                for value in values:
                    body = {"identity": f"{namespace}:{value}"}
                    found = client.post("/v1/profiles/lookup", json=body, headers=ALL)
                    assert found.status_code == 200
                    doc = found.json()
                    assert doc["profile_id"] == pid
                    assert doc["segments"] == profile["segments"]
            spent = profile["traits"]["spent"] or 0
            buyer = profile["segments"].get("buyers", {}).get("status") == "entered"
            first = next(iter(profile["identities"].items()))
            body = {"identity": f"{first[0]}:{first[1][0]}", "placement": "home"}
            offer = client.post("/v1/decisions", json=body, headers=ALL).json()["offer"]["id"]
            assert offer == ("big" if spent > 100 else "buyer" if buyer else "hello")
        for forward in forwards:
            moved = client.get(f"/v1/profiles/{forward['profile_id']}", headers=ALL)
            assert moved.status_code == 200 and moved.json()["profile_id"] in profiles
        # forget one person: the deletion the worker appends reaches the server
        pid, profile = next(iter(profiles.items()))
        namespace, values = next(iter(profile["identities"].items()))
        identity = f"{namespace}:{values[0]}"
        assert (
            run_cli("forget", "--config", config, "--state-dir", state, "--identity", identity) == 0
        )

        def gone() -> bool:
            answer = client.post("/v1/profiles/lookup", json={"identity": identity}, headers=ALL)
            return answer.status_code == 404

        wait_for(gone, timeout_s=5)
        assert client.get(f"/v1/profiles/{pid}", headers=ALL).status_code == 404
