"""Journeys through the whole pipeline from files (issue #16): `cdp replay --files` of people
adding to their carts, some buying during the wait, some browsing anonymously first.

- With `late: send`, one and two workers send the same messages (ids, steps, first names,
  cart items), each once, to a file destination; no buyer gets a reminder after buying.
- A replay of the same data a year old with the default `late: skip` sends nothing, and the
  state counts every send it did not make as `late` (`cdp journeys status` shows it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from operators.steps.profiles import PREFIX
from operators.store import decode, open_state
from tests.helpers import read_jsonl, replay_files, run_cli
from tests.journey_data import (
    ADD,
    BUY,
    MIN,
    NAMES,
    SEGMENTS,
    comparable,
    journeys_yaml,
    write_data,
)

PEOPLE = 150
SEED = 16
START_MS = 1_748_736_000_000  # 2025-06-01T00:00:00Z: old data, `late: send` sends it anyway

HEAD = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: crm, kind: profile, path: crm.jsonl, identities: {email: Email}}
  - {name: web, kind: event, path: web.jsonl}
destinations:
  - {name: changes, kind: file, path: changes.jsonl}
  - name: email
    kind: file
    path: email.jsonl
    segments: []
    attributes: [person.name.firstName]
    event: true
"""


def config(directory: Path, late: str, welcome: bool) -> Path:
    path = directory / "cdp.yaml"
    journeys = journeys_yaml(late=late, welcome="email" if welcome else "", caps=True)
    path.write_text(HEAD + SEGMENTS + journeys)
    return path


def journey_totals(state: Path) -> dict[str, Counter[str]]:
    """Every profile's journey totals (`j.n`) summed, read from the state as
    `operators.steps.journeys` keeps it."""
    store = open_state(state)
    totals: dict[str, Counter[str]] = {}
    try:
        for _, raw in store.scan(PREFIX):
            for journey, counts in decode(raw).get("j", {}).get("n", {}).items():
                totals.setdefault(journey, Counter()).update(
                    {k: v for k, v in counts.items() if ":" not in k}
                )
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return totals


def run(
    tmp: Path,
    workers: int,
    late: str,
    start_ms: int = START_MS,
    welcome: bool = False,
    anonymous_every: int = 0,
) -> dict[str, Any]:
    base = tmp / f"w{workers}-{late}"
    web = write_data(base, PEOPLE, start_ms, SEED, anonymous_every)
    replay_files(config(base, late, welcome), base / "state", workers)
    return {
        "web": web,
        "sends": read_jsonl(base / "email.jsonl"),
        "changes": read_jsonl(base / "changes.jsonl"),
        "totals": journey_totals(base / "state"),
        "dead": read_jsonl(base / "dead-letters.jsonl"),
    }


def check_sends(web: list[dict[str, Any]], sends: list[dict[str, Any]]) -> None:
    """Each send once; its first name and cart items those of its person and add; no
    reminder for a cart its person bought within the wait (30 minutes)."""
    assert len({s["id"] for s in sends}) == len(sends), "a send was written twice"
    buys: dict[str, list[int]] = {}
    for e in web:
        if e["eventType"] == BUY:
            buys.setdefault(e["_id"].split("-")[0], []).append(e["timestamp"])
    for s in sends:
        assert s["journey_id"] in ("cart-reminder", "welcome")
        i = int(s["identities"]["ECID"][0].removeprefix("d"))
        assert s["attributes"] == {"person.name.firstName": NAMES[i % len(NAMES)]}, s
        if s["journey_id"] == "welcome":
            continue
        add = s["event"]
        assert add["eventType"] == ADD and add["productListItems"], s
        assert add["identityMap"]["ECID"] == [{"id": f"d{i}"}]
        if s["message"] == "cart-1":
            # Sent at the wait's end (a wait ending at an event's very time runs first); no
            # purchase of the person in between.
            sent_at = add["timestamp"] + 30 * MIN
            bought = [t for t in buys.get(f"e{i}", []) if add["timestamp"] <= t < sent_at]
            assert bought == [], (s["id"], bought)


def test_one_and_two_workers_send_the_same(tmp_path: Path) -> None:
    started = time.monotonic()
    one = run(tmp_path, 1, "send")
    two = run(tmp_path, 2, "send")
    sends = one["sends"]
    messages = Counter(s["message"] for s in sends)
    print(f"{len(sends)} sends {dict(messages)} in {time.monotonic() - started:.1f}s")
    assert messages["cart-1"] > 30
    assert messages["cart-vip"] > 3 and messages["cart-2"] > 10
    check_sends(one["web"], sends)
    assert sorted(map(comparable, two["sends"])) == sorted(map(comparable, sends))
    totals = one["totals"]
    assert totals == two["totals"]
    cart = totals["cart-reminder"]
    assert cart["exited_exit_when"] > 10, cart  # buyers during the wait: no reminder
    assert cart["sent"] == len(sends) and cart["capped"] > 0
    assert cart["late"] == 0 and one["dead"] == [] and two["dead"] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_replay_of_old_data_sends_nothing_and_counts_it_late(
    tmp_path: Path, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    year_ago = (time.time_ns() // 1_000_000 - 365 * 86_400_000) // MIN * MIN
    old = run(tmp_path, workers, "skip", start_ms=year_ago, welcome=True)
    assert old["sends"] == []
    assert len(old["changes"]) > 100  # the audiences are there, as of the old data
    totals = old["totals"]
    cart, welcome = totals["cart-reminder"], totals["welcome"]
    assert cart["sent"] == welcome["sent"] == 0
    assert cart["late"] > 30 and welcome["late"] > 30, totals
    assert cart["exited_exit_when"] > 10
    # `cdp journeys status` says so, per journey and step.
    base = tmp_path / f"w{workers}-skip"
    capsys.readouterr()
    args = ("journeys", "status", "--config", base / "cdp.yaml", "--state-dir", base / "state")
    assert run_cli(*args, "--json") == 0
    status = {j["journey"]: j for j in json.loads(capsys.readouterr().out)["journeys"]}
    for journey, counts in totals.items():
        shown = status[journey]
        assert shown["totals"]["late"] == counts["late"] and "sent" not in shown["totals"]
        assert sum(step.get("late", 0) for step in shown["steps"].values()) == counts["late"]


@pytest.mark.xfail(
    reason="known (see tests/journey_data.py): a person's device-only records are keyed on "
    "another shard than their identified ones, and two workers may apply them out of "
    "event-time order, so their instances start from other adds",
    strict=False,
)
def test_anonymous_browsing_first_sends_the_same_on_two_workers(tmp_path: Path) -> None:
    one = run(tmp_path, 1, "send", anonymous_every=5)
    two = run(tmp_path, 2, "send", anonymous_every=5)
    assert len(one["sends"]) > 100
    assert sorted(map(comparable, two["sends"])) == sorted(map(comparable, one["sends"]))
