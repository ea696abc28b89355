"""Stream = batch after audiences are edited (issue #14): `cdp replay --files` with config A,
then with an edited config B into the same state. B adds a rule over a profile attribute, a rule
and a windowed rule over events no rule of A read (checkouts), changes a threshold (and so a
segment of segments that reads it), and removes a segment.

After the second run every profile's memberships equal the independent batch evaluation
(tests/batch_oracle.py) of B over the whole input; the removed segment is gone from every
profile and from `cdp segments sizes`, and each former member was told (`exited`, reason
`removed`); the change stream of both runs alternates and folds to the exported memberships.

Two variants: B reads the same input as A (the second run only rolls the edit out), and B reads
more (A saw the first half of each event file; the rest is appended before B runs).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from flows.generator import generate, write_files
from tests.batch_oracle import BatchResult, View, eq, evaluate, event_is, lt
from tests.flow.test_stream_batch import CONFIG_HEAD, Segment, members_of, segments_yaml
from tests.helpers import alternate, export, read_jsonl, replay_files, run_cli

PEOPLE = 200
EVENTS = 3000
SEED = 5

PURCHASE = event_is("commerce.purchases")
VIEW = event_is("commerce.productViews")
CHECKOUT = event_is("commerce.checkouts")
ADD = event_is("commerce.productListAdds")
VOICE = event_is("voice.intent")
LEVEL = "_techmarketingdemos.loyalty.level"
EVENT_FILES = ("web.jsonl", "voice.jsonl", "store.jsonl")


def _spent(v: View) -> float:
    return v.sum("commerce.order.priceTotal", PURCHASE)


GOLD = Segment("gold", f'profile.{LEVEL} == "gold"', lambda v: eq(v.profile(LEVEL), "gold"))
BUYERS = Segment(
    "buyers", 'exists(event.eventType == "commerce.purchases")', lambda v: v.exists(PURCHASE)
)
ENGAGED = Segment(
    "engaged-3d",
    'count(event.eventType == "commerce.productViews", within="3d") >= 3',
    lambda v: v.count(VIEW, within="3d") >= 3,
)
BIG_A = Segment(
    "big-spenders",
    'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases") > 200',
    lambda v: _spent(v) > 200,
)
BIG_B = Segment(
    "big-spenders",
    'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases") > 100',
    lambda v: _spent(v) > 100,
)
BUYERS_NOT_BIG = Segment(  # unchanged text, but it reads big-spenders, which changes
    "buyers-not-big",
    'in_segment("buyers") and not in_segment("big-spenders")',
    lambda v: v.in_segment("buyers") and not v.in_segment("big-spenders"),
)
VOICE_USERS = Segment(  # removed in B
    "voice-users", 'exists(event.eventType == "voice.intent")', lambda v: v.exists(VOICE)
)
SILVER = Segment("silver", f'profile.{LEVEL} == "silver"', lambda v: eq(v.profile(LEVEL), "silver"))
CHECKOUT_TWICE = Segment(  # no rule of A reads checkouts: only the history can rebuild it
    "checkout-twice",
    'count(event.eventType == "commerce.checkouts") >= 2',
    lambda v: v.count(CHECKOUT) >= 2,
)
CHECKOUT_3D = Segment(
    "checkout-3d",
    'count(event.eventType == "commerce.checkouts", within="3d") >= 1',
    lambda v: v.count(CHECKOUT, within="3d") >= 1,
)

VIEWED_A = Segment(
    "viewed-recently",
    'exists(event.eventType == "commerce.productViews", within="2d")',
    lambda v: v.exists(VIEW, within="2d"),
)
VIEWED_B = Segment(  # a shorter window: its timers are set again
    "viewed-recently",
    'exists(event.eventType == "commerce.productViews", within="12h")',
    lambda v: v.exists(VIEW, within="12h"),
)
ABANDONED = Segment(  # absent(): its last cart add rebuilt from the history
    "abandoned-cart",
    'absent(event.eventType == "commerce.purchases", '
    'after=event.eventType == "commerce.productListAdds", within="30m")',
    lambda v: v.absent(PURCHASE, after=ADD, within="30m"),
)
LAST_MOBILE = Segment(
    "last-on-mobile",
    'last(event.device.type, event.eventType != "voice.intent") == "mobile"',
    lambda v: eq(v.last("device.type", lambda e: not VOICE(e)), "mobile"),
)
CHEAP_VIEW = Segment(
    "cheap-view-2d",
    'min(event.productListItems.priceTotal, event.eventType == "commerce.productViews", '
    'within="2d") < 20',
    lambda v: lt(v.min("productListItems.priceTotal", VIEW, within="2d"), 20),
)

CONFIG_A = (GOLD, BUYERS, ENGAGED, BIG_A, BUYERS_NOT_BIG, VIEWED_A, VOICE_USERS)
CONFIG_B = (
    *(GOLD, BUYERS, ENGAGED, BIG_B, BUYERS_NOT_BIG, VIEWED_B),
    *(SILVER, CHECKOUT_TWICE, CHECKOUT_3D, ABANDONED, LAST_MOBILE, CHEAP_VIEW),
)
ADDED = {
    "silver",
    "checkout-twice",
    "checkout-3d",
    "abandoned-cart",
    "last-on-mobile",
    "cheap-view-2d",
}
CHANGED = {"big-spenders", "viewed-recently"}
# With a window (or absent): rolled out at the event time of the moment, then kept by timers.
WINDOWED = {"checkout-3d", "abandoned-cart", "cheap-view-2d", "viewed-recently"}
DEPENDENT = {"buyers-not-big"}  # may change with what it reads
UNCHANGED = {"gold", "buyers", "engaged-3d"}
REMOVED = "voice-users"
KNOWN_REASONS = {"event", "profile", "merge", "timer", "definition", "removed"}


def write_config(path: Path, segments: tuple[Segment, ...], extra: str = "") -> Path:
    path.write_text(CONFIG_HEAD + segments_yaml(segments) + extra)
    return path


def rules(segments: tuple[Segment, ...]) -> dict[str, Any]:
    return {s.id: s.batch for s in segments}


def reason(change: dict[str, Any]) -> str:
    return str(change["reason"]).split(":")[0]


def sizes(config: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    """`cdp segments sizes`, parsed."""
    capsys.readouterr()
    assert run_cli("segments", "sizes", "--config", config, "--state-dir", state) == 0
    out: dict[str, int] = {}
    for line in capsys.readouterr().out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def fold(changes: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The latest change of each (profile, segment), by `sequence`, held as `entered`."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for c in changes:
        key = (c["profile_id"], c["segment_id"])
        if key not in last or c["sequence"] > last[key]["sequence"]:
            last[key] = c
    out: dict[str, set[str]] = defaultdict(set)
    for (pid, sid), change in last.items():
        if change["status"] == "entered":
            out[sid].add(pid)
    return dict(out)


def split_event_files(full: Path, into: Path) -> dict[str, bytes]:
    """The profile files whole and the first half of each event file into `into`; returns
    the rest of each event file, to append before the second run."""
    rest: dict[str, bytes] = {}
    for path in full.iterdir():
        data = path.read_bytes()
        if path.name in EVENT_FILES:
            lines = data.splitlines(keepends=True)
            half = len(lines) // 2
            (into / path.name).write_bytes(b"".join(lines[:half]))
            rest[path.name] = b"".join(lines[half:])
        else:
            (into / path.name).write_bytes(data)
    return rest


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("edits-data")
    write_files(generate(PEOPLE, EVENTS, seed=SEED), data, junk=False)
    return data


@pytest.fixture(
    scope="module",
    params=[(1, "same", ""), (2, "same", ""), (1, "more", ""), (2, "more", ""), (2, "more", "2h")],
    ids=[
        "1-worker",
        "2-workers",
        "1-worker-more-input",
        "2-workers-more-input",
        "2-workers-more-input-lateness-2h",
    ],
)
def run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, generated: Path
) -> dict[str, Any]:
    workers, variant, lateness = request.param
    tmp = tmp_path_factory.mktemp(f"edits-w{workers}-{variant}{lateness}")
    data = tmp / "data"
    data.mkdir()
    rest = split_event_files(generated, data)
    if variant == "same":  # put the halves back together: A reads everything too
        for name, tail in rest.items():
            with (data / name).open("ab") as handle:
                handle.write(tail)
    # With lateness the rollout evaluates at the state's event time (the watermark less the
    # lateness); the replay's end still brings every timer up to the last event.
    extra = f"time: {{allowed_lateness: {lateness}}}\n" if lateness else ""
    config_a = write_config(data / "a.yaml", CONFIG_A, extra)
    config_b = write_config(data / "b.yaml", CONFIG_B, extra)
    state = tmp / "state"

    replay_files(config_a, state, workers, tmp / "changes-a.jsonl")
    profiles_a = export(config_a, state, tmp, "export-a.jsonl")
    oracle_a = evaluate(config_a, profiles_a, rules(CONFIG_A))
    # What the rollout alone must do: B's rules over what A read, at A's end.
    rollout = evaluate(config_b, profiles_a, rules(CONFIG_B))

    if variant == "more":
        for name, tail in rest.items():
            with (data / name).open("ab") as handle:
                handle.write(tail)
    replay_files(config_b, state, workers, tmp / "changes-b.jsonl")
    profiles_b = export(config_b, state, tmp, "export-b.jsonl")
    oracle_b = evaluate(config_b, profiles_b, rules(CONFIG_B))
    return {
        "workers": workers,
        "variant": variant,
        "config_a": config_a,
        "config_b": config_b,
        "state": state,
        "profiles_a": profiles_a,
        "profiles_b": profiles_b,
        "oracle_a": oracle_a,
        "oracle_b": oracle_b,
        "rollout": rollout,
        "changes_a": read_jsonl(tmp / "changes-a.jsonl"),
        "changes_b": read_jsonl(tmp / "changes-b.jsonl"),
    }


def _mismatches(
    profiles: list[dict[str, Any]], oracle: BatchResult, segments: tuple[Segment, ...], title: str
) -> dict[str, tuple[list[str], list[str]]]:
    stream = members_of(profiles)
    print(f"\n{title}: {len(profiles)} profiles, now = {oracle.now_ms}")
    print(f"  {'segment':<16} {'stream':>6} {'batch':>6}  only-stream only-batch")
    out: dict[str, tuple[list[str], list[str]]] = {}
    for seg in segments:
        got, want = stream.get(seg.id, set()), oracle.members[seg.id]
        print(
            f"  {seg.id:<16} {len(got):>6} {len(want):>6}  "
            f"{len(got - want):>11} {len(want - got):>10}"
        )
        if got != want:
            out[seg.id] = (sorted(got - want)[:5], sorted(want - got)[:5])
    return out


def test_before_the_edit_memberships_equal_the_batch(run: dict[str, Any]) -> None:
    """The baseline: config A alone is stream = batch (else the edit is not to blame)."""
    assert run["oracle_a"].unplaced == []
    assert _mismatches(run["profiles_a"], run["oracle_a"], CONFIG_A, "config A") == {}


def test_after_the_edit_memberships_equal_the_batch_evaluation_of_b(run: dict[str, Any]) -> None:
    oracle: BatchResult = run["oracle_b"]
    assert oracle.unplaced == []
    assert sum(p["events"]["count"] for p in run["profiles_b"]) == EVENTS
    assert _mismatches(run["profiles_b"], oracle, CONFIG_B, "config B") == {}


def test_every_edited_segment_is_non_trivial(run: dict[str, Any]) -> None:
    """Each added or changed rule has members and non-members, and the edit moved someone."""
    oracle: BatchResult = run["oracle_b"]
    total = len(run["profiles_b"])
    trivial = {
        sid: len(oracle.members[sid])
        for sid in ADDED | CHANGED | DEPENDENT
        if not 0 < len(oracle.members[sid]) < total
    }
    assert trivial == {}
    before = members_of(run["profiles_a"])
    assert before.get("big-spenders", set()) != oracle.members["big-spenders"]
    assert before.get(REMOVED), "the removed segment had members"


def test_the_removed_segment_is_gone(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    holding = [p["profile_id"] for p in run["profiles_b"] if REMOVED in p["segments"]]
    assert holding == []
    assert REMOVED not in sizes(run["config_b"], run["state"], capsys)
    # Asked with the old config, the state holds no member of it any more.
    assert sizes(run["config_a"], run["state"], capsys).get(REMOVED, 0) == 0


def test_sizes_equal_the_batch_sizes(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    oracle: BatchResult = run["oracle_b"]
    got = sizes(run["config_b"], run["state"], capsys)
    assert got == {s.id: len(oracle.members[s.id]) for s in CONFIG_B}


def test_every_former_member_of_the_removed_segment_exited(run: dict[str, Any]) -> None:
    former = members_of(run["profiles_a"])[REMOVED]
    changes = [c for c in run["changes_b"] if c["segment_id"] == REMOVED]
    assert all(c["status"] == "exited" for c in changes), "nobody enters a removed segment"
    removed = Counter(c["profile_id"] for c in changes if reason(c) == "removed")
    if run["variant"] == "same":
        # Nothing else happened: exactly one `exited`/`removed` per former member.
        assert [reason(c) for c in changes if reason(c) != "removed"] == []
        assert removed == Counter(former)
    else:
        # Profiles may merge in the second run; every former member still there was told once.
        still = {p["profile_id"] for p in run["profiles_b"]} & former
        assert {pid for pid in still if removed[pid] != 1} == set()
        assert set(removed) <= former
    assert fold(run["changes_a"] + run["changes_b"]).get(REMOVED, set()) == set()


def test_the_edit_is_rolled_out_with_reason_definition(run: dict[str, Any]) -> None:
    """The changes with reason `definition` are B's rules over the state A left, against the
    memberships A left. With more input, a profile a record touches is upgraded first, and one
    that merged away may not be told: exact for the profiles still there, and only for rules
    without a window (a windowed rule may be rolled out at a later event time)."""
    changes = run["changes_b"]
    assert {reason(c) for c in changes} <= KNOWN_REASONS
    before = members_of(run["profiles_a"])
    target: BatchResult = run["rollout"]
    still = {p["profile_id"] for p in run["profiles_a"]} & {
        p["profile_id"] for p in run["profiles_b"]
    }
    same = run["variant"] == "same"
    if same:  # the second run read nothing new: its changes are the edit, and only the edit
        assert {c["segment_id"] for c in changes if c["segment_id"] in UNCHANGED} == set()
        assert {reason(c) for c in changes if c["segment_id"] != REMOVED} <= {"definition"}
    for sid in sorted(ADDED | CHANGED | DEPENDENT):
        if not same and sid in WINDOWED:
            continue
        old, new = before.get(sid, set()), target.members[sid]
        want = {(pid, "entered") for pid in new - old} | {(pid, "exited") for pid in old - new}
        got = [
            (c["profile_id"], c["status"])
            for c in changes
            if c["segment_id"] == sid and reason(c) == "definition"
        ]
        assert len(got) == len(set(got)), f"{sid}: a profile was told twice"
        if sid in ADDED | CHANGED:
            assert want, f"{sid}: the edit moves somebody"
        if same:
            assert set(got) == want, sid
        else:
            assert set(got) <= want, sid
            assert {g for g in got if g[0] in still} == {w for w in want if w[0] in still}, sid
    # Independently of the oracle: who was silver when A ended entered `silver` by the rollout.
    silver_then = {
        p["profile_id"]
        for p in run["profiles_a"]
        if p["attributes"].get("_techmarketingdemos", {}).get("loyalty", {}).get("level")
        == "silver"
    } & still
    assert silver_then
    rolled = {
        c["profile_id"]
        for c in changes
        if c["segment_id"] == "silver" and c["status"] == "entered" and reason(c) == "definition"
    }
    assert silver_then <= rolled


def test_changes_of_both_runs_alternate_and_fold_to_the_export(run: dict[str, Any]) -> None:
    changes = run["changes_a"] + run["changes_b"]
    assert run["changes_b"]
    assert alternate(changes, in_order=run["workers"] == 1)
    ids = Counter(c["id"] for c in changes)
    assert [i for i, n in ids.items() if n > 1] == []
    assert fold(changes) == dict(members_of(run["profiles_b"]))


def test_again_changes_nothing_and_editing_back_restores_a(
    run: dict[str, Any], tmp_path: Path
) -> None:
    """B once more: the edit is rolled out already, nothing is sent. Then A again: the removed
    segment comes back from the kept history, the added ones go (reason `removed`), and the
    memberships equal A's rules over the whole input. (Last: it edits the module's state.)"""
    state, workers = run["state"], run["workers"]
    replay_files(run["config_b"], state, workers, tmp_path / "again.jsonl")
    assert read_jsonl(tmp_path / "again.jsonl") == []
    assert export(run["config_b"], state, tmp_path, "again.jsonl") == run["profiles_b"]

    replay_files(run["config_a"], state, workers, tmp_path / "back.jsonl")
    back = read_jsonl(tmp_path / "back.jsonl")
    profiles = export(run["config_a"], state, tmp_path, "export-back.jsonl")
    oracle = evaluate(run["config_a"], profiles, rules(CONFIG_A))
    assert _mismatches(profiles, oracle, CONFIG_A, "back to A") == {}
    assert [p["profile_id"] for p in profiles if set(p["segments"]) & ADDED] == []
    gone = [c for c in back if c["segment_id"] in ADDED]
    assert gone and all(c["status"] == "exited" and reason(c) == "removed" for c in gone)
    returned = [c for c in back if c["segment_id"] == REMOVED]
    assert returned and all(reason(c) == "definition" for c in returned)
    changes = run["changes_a"] + run["changes_b"] + back
    # A segment removed and added again continues its sequence: no id is used twice.
    assert len({c["id"] for c in changes}) == len(changes)
    assert alternate(changes, in_order=workers == 1)
    assert fold(changes) == dict(members_of(profiles))


def test_a_cosmetic_edit_rolls_nothing_out(generated: Path, tmp_path: Path) -> None:
    """The same rules written differently (order, quotes, spaces, parentheses, names): the
    definitions are the parsed rules, so the second run sends nothing."""
    config_a = write_config(tmp_path / "a.yaml", CONFIG_A)
    lines = ["segments:"]
    for seg in reversed(CONFIG_A):
        rule = seg.rule.replace(" == ", "==").replace(" >= ", ">=").replace('"', "'")
        lines += [f"  - id: {seg.id}", f"    name: the {seg.id} people", f'    rule: "({rule})"']
    config_b = tmp_path / "b.yaml"
    config_b.write_text(CONFIG_HEAD + "\n".join(lines) + "\n")
    for name in ("crm.json", "loyalty.json", *EVENT_FILES):
        (tmp_path / name).write_bytes((generated / name).read_bytes())
    replay_files(config_a, tmp_path / "state", 1, tmp_path / "a.jsonl")
    before = export(config_a, tmp_path / "state", tmp_path, "export-a.jsonl")
    replay_files(config_b, tmp_path / "state", 1, tmp_path / "b.jsonl")
    assert read_jsonl(tmp_path / "b.jsonl") == []
    assert export(config_b, tmp_path / "state", tmp_path, "export-b.jsonl") == before
