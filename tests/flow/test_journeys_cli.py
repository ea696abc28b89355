"""`cdp journeys status` and `cdp journeys trace` on a state built by `cdp replay --files`:
an abandoned-cart journey over last month's data (`late: send`, so its steps send)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import replay_files, run_cli

CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
sources:
  - {name: crm, kind: profile, path: crm.jsonl, identities: {email: Email}}
  - {name: web, kind: event, path: web.jsonl, identities: {email: Email}}
segments:
  - {id: vip, rule: 'profile.tier == "vip"'}
destinations:
  - {name: email, kind: file, path: email.jsonl, segments: []}
  - {name: changes, kind: file, path: changes.jsonl}
dead_letters: {kind: file, path: dead.jsonl}
journeys:
  - id: cart
    trigger: {event: 'event.eventType == "add"'}
    exit_when: 'exists(event.eventType == "buy", within="2d")'
    late: send
    steps:
      - send: {destination: email, message: cart-1}
      - wait: 1d
      - if: 'profile.tier == "vip"'
        then: [{send: {destination: email, message: cart-vip}}]
        else: [{send: {destination: email, message: cart-2}}]
"""
DAY = "2026-11-0"


def event(n: int, kind: str, who: str, day: int, hour: int) -> dict[str, Any]:
    return {
        "_id": f"e{n}",
        "eventType": kind,
        "timestamp": f"{DAY}{day}T{hour:02d}:00:00Z",
        "email": f"{who}@x.com",
    }


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ann: a vip who adds, gets both messages, adds again and waits; bob: adds and buys
    during the wait; cy: adds, gets cart-1 and cart-2. dee's view moves event time on."""
    tmp = tmp_path_factory.mktemp("journeys")
    write(tmp / "crm.jsonl", [{"email": "Ann@x.com", "tier": "vip"}, {"email": "cy@x.com"}])
    write(
        tmp / "web.jsonl",
        [
            event(1, "add", "ann", 1, 10),
            event(2, "add", "bob", 1, 10),
            event(3, "add", "cy", 1, 11),
            event(4, "buy", "bob", 1, 12),
            event(5, "add", "ann", 2, 12),
            event(6, "view", "dee", 3, 0),
        ],
    )
    config = tmp / "cdp.yaml"
    config.write_text(CONFIG)
    replay_files(config, tmp / "state")
    return config, tmp / "state"


def cdp_out(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = run_cli(*args)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_counts_what_the_replay_did(
    replayed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state = replayed
    where = ("--config", config, "--state-dir", state)
    code, out, _ = cdp_out(capsys, "journeys", "status", *where, "--json")
    assert code == 0
    doc = orjson.loads(out)
    (cart,) = doc["journeys"]
    assert cart["journey"] == "cart" and cart["configured"] and doc["profiles"] == 3
    assert cart["totals"] == {"entered": 4, "completed": 2, "sent": 6}
    assert cart["exited"] == {"exit_when": 1}
    assert {step: c["sent"] for step, c in cart["steps"].items()} == {
        "1": 4,
        "3.then.1": 1,
        "3.else.1": 1,
    }
    assert cart["in_flight"] == 1
    (waiting,) = cart["waiting"]
    assert waiting["step"] == "3" and waiting["first_wake"] == "2026-11-03T12:00:00Z"
    sends = [orjson.loads(x) for x in (config.parent / "email.jsonl").read_bytes().splitlines()]
    assert len(sends) == 6  # what status counts is what went out
    code, out, _ = cdp_out(capsys, "journeys", "status", *where)
    assert code == 0
    assert "journey cart  (version " in out and "in flight 1" in out
    assert "sends: sent 6, late 0, capped 0, held out 0" in out
    assert "exited: exit_when 1" in out
    code, _, err = cdp_out(capsys, "journeys", "status", *where, "--journey", "nope")
    assert code == 2 and "no journey 'nope'" in err


def test_trace_is_one_persons_timeline(
    replayed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state = replayed
    where = ("--config", config, "--state-dir", state)
    code, out, _ = cdp_out(capsys, "journeys", "trace", *where, "--identity", "Email:ANN@x.com")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("profile p_") and lines[0].endswith(": 10 lines")
    assert lines[1].split()[:4][0] == "2026-11-01T10:00:00Z" and "entered" in lines[1]
    assert "sent" in lines[2] and "cart-1" in lines[2]
    assert "branch" in lines[5] and lines[5].split()[-1] == "then"
    assert "cart-vip" in lines[6]
    assert "in flight:" in lines and "wakes 2026-11-03T12:00:00Z" in out
    code, out, _ = cdp_out(capsys, "journeys", "trace", *where, "--identity", "Email:bob@x.com")
    assert out.splitlines()[-1] == "totals: cart entered 1, exited exit_when 1, sent 1"
    code, out, _ = cdp_out(
        capsys, "journeys", "trace", *where, "--identity", "Email:bob@x.com", "--json"
    )
    doc = orjson.loads(out)
    assert [x["what"] for x in doc["log"]] == ["entered", "sent", "waiting", "exited"]
    assert doc["log"][-1]["detail"] == "exit_when" and doc["in_flight"] == []
    assert doc["totals"] == {"cart": {"entered": 1, "exited_exit_when": 1, "sent": 1}}


def test_trace_of_an_unknown_person_says_so_without_the_value(
    replayed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state = replayed
    code, out, err = cdp_out(
        capsys,
        "journeys",
        "trace",
        "--config",
        config,
        "--state-dir",
        state,
        "--identity",
        "Email:nobody@x.com",
    )
    assert code == 1 and out == ""
    assert "no profile holds that Email" in err and "nobody" not in err
