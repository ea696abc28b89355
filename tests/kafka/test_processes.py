"""Two processes (`-i/-a`) against one process, over the same Kafka topics (DESIGN §2-3).

The identity graph runs on one key of one process, profiles on shard keys spread over both, and
profiles that merged away move through the feedback topic. For conflict-free input the graph
and the profiles equal a one-process run; where links conflict (shared tablets), only the
clusters they touch may differ, and none breaks a unique namespace. The clusters also equal the
independent offline union-find of tests/flow/test_identity_oracle.py.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from flows.generator import generate, write_files
from tests.flow.test_identity_oracle import offline_clusters, records
from tests.helpers import ROOT, export, read_jsonl, run_cli
from tests.kafka_broker import consume_all, create_topics, produce

pytestmark = pytest.mark.kafka

SOURCES = ("crm", "loyalty", "web", "voice", "store")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _addresses(processes: int) -> list[str]:
    """`-a host:port` for each process of a cluster on loopback."""
    return [a for _ in range(processes) for a in ("-a", f"127.0.0.1:{_free_port()}")]


def _ecid_key(value: bytes) -> bytes | None:
    ids = orjson.loads(value).get("identityMap", {}).get("ECID") or [{}]
    ecid = ids[0].get("id")
    return ecid.encode() if isinstance(ecid, str) else None


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo stream in five topics (web in two partitions, keyed by device) and the
    records as the one-process run reads them, for the oracle."""
    prefix = f"procs{tmp_path_factory.mktemp('p').name[-6:]}."
    stream = generate(3000, 30000, seed=9)
    assert stream.truth["shared_devices"]
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    # The demo's journey sends to the demo's email destination, replaced here.
    config.pop("journeys"), config.pop("journey_caps")
    for src in config["sources"]:
        src["topic"] = prefix + src["name"]
        src.pop("path", None)
    config["destinations"] = []
    config["dead_letters"] = {"kind": "kafka", "topic": prefix + "dead"}
    config["kafka"] = {"bootstrap_servers": kafka_bootstrap}
    config["recovery"] = {"epoch_interval_ms": 200}
    create_topics(kafka_bootstrap, [prefix + n for n in SOURCES if n != "web"] + [prefix + "dead"])
    create_topics(kafka_bootstrap, [prefix + "web"], partitions=2)
    for name in SOURCES:
        rows = getattr(stream, name)
        values = [orjson.dumps(r) for r in rows]
        produce(kafka_bootstrap, prefix + name, values, _ecid_key if name == "web" else None)
    return {"config": config, "stream": stream, "prefix": prefix}


def _config(tmp: Path, base: dict[str, Any], feedback: str) -> Path:
    data = {**base, "identity": {**base.get("identity", {}), "feedback_topic": feedback}}
    path = tmp / f"{feedback}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _replay(config: Path, state: Path, out: Path, *cluster: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "flows.cli", "replay", "--config", str(config),
        "--state-dir", str(state), "--audience-out", str(out), *cluster,
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    """Waits for a replay to end well; returns what it printed on stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no end within {timeout}s: {err.decode()[-3000:]}") from None
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode()


def _clusters(profiles: list[dict[str, Any]]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset((ns, v) for ns, vs in p["identities"].items() for v in vs) for p in profiles}


def _view(p: dict[str, Any]) -> tuple[Any, ...]:
    """Attributes, memberships and event counts. A segment a profile left is listed as
    `exited`; which ones are listed depends on the path the merges took, so only the
    memberships held are compared."""
    segments = {s for s, v in p["segments"].items() if v["status"] == "entered"}
    return (orjson.dumps(p["attributes"], option=orjson.OPT_SORT_KEYS), segments, p["events"])


def _assert_equal_where_calm(
    base: dict[str, Any], one: list[dict[str, Any]], two: list[dict[str, Any]]
) -> None:
    """No cluster breaks a unique namespace; clusters touched by a refused link may differ
    (which link wins depends on arrival order); every other cluster and its profile is equal."""
    unique = {ns["name"] for ns in base["namespaces"] if ns.get("unique")}
    for cluster in _clusters(two):
        for u in unique:
            assert sum(1 for ns, _ in cluster if ns == u) <= 1

    # Clusters touched by a refused link may differ (which link wins depends on arrival
    # order); everything else is equal, clusters and profiles alike.
    c1, c2 = _clusters(one), _clusters(two)
    touched: set[tuple[str, str]] = set()
    for c in c1 ^ c2:
        touched |= c
    members = sum(len(c) for c in c1)
    assert len(touched) < 0.05 * members
    calm_one = {c for c in c1 if not c & touched}
    calm_two = {c for c in c2 if not c & touched}
    assert calm_one == calm_two
    merged = [c for c in calm_one if len(c) > 1]
    assert len(merged) > 500, "the data links many identities"
    view_one = {_clusters([p]).pop(): _view(p) for p in one}
    view_two = {_clusters([p]).pop(): _view(p) for p in two}
    differ = [c for c in calm_one if view_one[c] != view_two[c]]
    assert differ == [], f"{len(differ)} of {len(calm_one)} profiles differ"


def _one_process(topics: dict[str, Any], tmp_path: Path, feedback: str) -> Path:
    """The reference: a replay on one process into `tmp_path/one`; returns its config."""
    config = _config(tmp_path, topics["config"], topics["prefix"] + feedback)
    _finish(_replay(config, tmp_path / "one", tmp_path / "one.jsonl"))
    return config


def _two_processes(config: Path, state: Path, changes: str) -> list[subprocess.Popen[bytes]]:
    """Both processes of a cluster, started; process i writes its changes to `changes`
    with `{i}` filled in."""
    addresses = _addresses(2)
    return [
        _replay(config, state, state.parent / changes.format(i=i), "-i", str(i), *addresses)
        for i in range(2)
    ]


def test_two_processes_equal_one(
    topics: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = topics["config"]
    one_cfg = _one_process(topics, tmp_path, "feedback-one")
    two_cfg = _config(tmp_path, base, topics["prefix"] + "feedback-two")
    printed = [_finish(p) for p in _two_processes(two_cfg, tmp_path / "two", "two-{i}.jsonl")]
    # Each process prints its progress; the one holding the identity step, which every record
    # passes, the records applied.
    finals = [
        [line for line in err.splitlines() if line.startswith("replay, ")][-1] for err in printed
    ]
    assert [line.split(":")[0] for line in finals] == [
        "replay, process 0 of 2",
        "replay, process 1 of 2",
    ]
    assert sum("records applied" in line for line in finals) == 1, finals
    assert all(" changes" in line for line in finals), finals

    one = export(one_cfg, tmp_path / "one", tmp_path, "one-export.jsonl")
    two = export(two_cfg, tmp_path / "two", tmp_path, "two-export.jsonl")
    # Both processes hold profiles: the work was really spread.
    per_process = [
        len(export(two_cfg, d, tmp_path, f"{d.name}.jsonl"))
        for d in sorted((tmp_path / "two").glob("process-*"))
    ]
    assert len(per_process) == 2 and min(per_process) > 0.2 * len(two), per_process

    _assert_equal_where_calm(base, one, two)

    # The change streams of both processes fold to the exported memberships.
    changes = read_jsonl(tmp_path / "two-0.jsonl") + read_jsonl(tmp_path / "two-1.jsonl")
    _assert_folds_to(changes, two)

    # `cdp identity` explains a cluster of the two-process state as of one process.
    person = max(two, key=lambda p: len(_clusters([p]).pop()))
    ns, values = next(iter(sorted(person["identities"].items())))
    reports = []
    for state, cfg in ((tmp_path / "one", one_cfg), (tmp_path / "two", two_cfg)):
        capsys.readouterr()
        identity = f"{ns}:{values[0]}"
        assert (
            run_cli("identity", "--config", cfg, "--state-dir", state, "--identity", identity) == 0
        )
        reports.append(orjson.loads(capsys.readouterr().out))
    first, second = reports
    assert second["members"] == person["identities"]
    assert {k: v for k, v in first.items() if k != "links"} == {
        k: v for k, v in second.items() if k != "links"
    }
    assert len(second["links"]) == len(_clusters([person]).pop()) - 1


def _assert_folds_to(changes: list[dict[str, Any]], profiles: list[dict[str, Any]]) -> None:
    """The latest change of each (profile, segment), by `sequence`, is its exported state."""
    state: dict[tuple[str, str], tuple[int, str]] = {}
    for c in changes:
        key = (c["profile_id"], c["segment_id"])
        if key not in state or c["sequence"] > state[key][0]:
            state[key] = (c["sequence"], c["status"])
    folded = {k for k, (_, status) in state.items() if status == "entered"}
    exported = {
        (p["profile_id"], s)
        for p in profiles
        for s, v in p["segments"].items()
        if v["status"] == "entered"
    }
    assert folded == exported


def test_two_processes_match_the_offline_union_find(topics: dict[str, Any], tmp_path: Path) -> None:
    """The identity oracle over the records as both runs read them: calm clusters equal."""
    base = topics["config"]
    cfg = _config(tmp_path, base, topics["prefix"] + "feedback-oracle")
    addresses = _addresses(2)
    procs = [
        _replay(cfg, tmp_path / "s", tmp_path / f"c{i}.jsonl", "-i", str(i), *addresses)
        for i in range(2)
    ]
    for proc in procs:
        _finish(proc)
    engine = _clusters(export(cfg, tmp_path / "s", tmp_path))

    # The oracle reads the generated files in source order.
    files = tmp_path / "files"
    files.mkdir()
    write_files(topics["stream"], files, junk=False)
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    unique = {ns["name"] for ns in demo["namespaces"] if ns.get("unique")}
    expected, refused = offline_clusters(records(demo, files), unique, 50)
    assert refused > 0
    touched: set[tuple[str, str]] = set()
    for c in expected ^ engine:
        touched |= c
    assert len(touched) < 0.05 * sum(len(c) for c in expected)
    assert {c for c in engine if not c & touched} == {c for c in expected if not c & touched}


LIVE_CONFIG = """\
namespaces:
  - {{name: Email, unique: true, normalize: email}}
  - {{name: ECID}}
identity: {{feedback_topic: {p}feedback}}
sources:
  - {{name: web, kind: event, topic: {p}web}}
segments:
  - id: browsers
    rule: 'count(event.eventType == "web.webpagedetails.pageViews") >= 2'
destinations:
  - {{name: changes, kind: kafka, topic: {p}changes}}
dead_letters: {{kind: kafka, topic: {p}dead}}
kafka: {{bootstrap_servers: "{bootstrap}"}}
recovery: {{epoch_interval_ms: 200}}
"""


def _view_event(i: int, ecid: str, email: str | None = None) -> bytes:
    ids: dict[str, Any] = {"ECID": [{"id": ecid}]}
    if email:
        ids["Email"] = [{"id": email}]
    kind = "userAccount.login" if email else "web.webpagedetails.pageViews"
    return orjson.dumps(
        {"_id": f"e{i}", "timestamp": 1_700_000_000_000 + i, "eventType": kind, "identityMap": ids}
    )


def test_two_live_workers_move_merged_profiles(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Each person browses anonymously once, logs in (the device's profile merges into the
    person's), and browses once more: `browsers` (2 page views) needs both halves, so it is
    entered only where the anonymous profile reached the person's, also across processes."""
    p = topic_prefix
    create_topics(kafka_bootstrap, [f"{p}web", f"{p}changes", f"{p}dead"])
    create_topics(kafka_bootstrap, [f"{p}web"], partitions=2)
    config = tmp_path / "cdp.yaml"
    config.write_text(LIVE_CONFIG.format(p=p, bootstrap=kafka_bootstrap))
    people = 12
    addresses = _addresses(2)

    def start(i: int) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable, "-m", "flows.cli", "run", "--config", str(config),
            "--state-dir", str(tmp_path / "state"), "-i", str(i), *addresses,
        ]  # fmt: skip
        return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)

    workers = [start(0), start(1)]
    try:
        values = []
        for n in range(people):
            values.append(_view_event(3 * n, f"dev-{n}"))
            values.append(_view_event(3 * n + 1, f"dev-{n}", email=f"P{n}@Example.com"))
            values.append(_view_event(3 * n + 2, f"dev-{n}"))
        produce(
            kafka_bootstrap, f"{p}web", values, key_fn=lambda v: orjson.loads(v)["_id"].encode()
        )
        deadline = time.monotonic() + 90
        entered: set[str] = set()
        while time.monotonic() < deadline and len(entered) < people:
            for worker in workers:
                assert worker.poll() is None, (
                    worker.stderr.read() if worker.stderr else b""
                ).decode()
            changes = [
                orjson.loads(v) for v in consume_all(kafka_bootstrap, f"{p}changes", timeout_s=2)
            ]
            entered = {
                c["identities"]["Email"][0]
                for c in changes
                if c["status"] == "entered" and "Email" in c["identities"]
            }
        assert entered == {f"p{n}@example.com" for n in range(people)}
        moved = [
            v for v in consume_all(kafka_bootstrap, f"{p}feedback", timeout_s=2) if b'"adopt"' in v
        ]
        assert moved, "some merged profiles moved between shards through the feedback topic"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            _, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err.decode()[-3000:]
    profiles = export(config, tmp_path / "state", tmp_path)
    persons = [pr for pr in profiles if "Email" in pr["identities"]]
    assert len(persons) == people
    assert all(pr["events"]["count"] == 3 and len(pr["identities"]["ECID"]) == 1 for pr in persons)
    assert len(profiles) == people  # no anonymous profile was left behind


def test_two_processes_survive_kill_9(topics: dict[str, Any], tmp_path: Path) -> None:
    """DESIGN §3 on several processes: SIGKILL both processes at random moments (a cluster
    stops as a whole when one process dies), start them again with the same commands; the
    result equals a one-process run wherever no link conflicted, and the change stream after
    dedup by id folds to the exported memberships."""
    rng = random.Random(11)
    base = topics["config"]
    one_cfg = _one_process(topics, tmp_path, "feedback-kill-one")
    cfg = _config(tmp_path, base, topics["prefix"] + "feedback-kill")
    kills = 0
    for attempt in range(3):
        procs = _two_processes(cfg, tmp_path / "s", f"c{{i}}-{attempt}.jsonl")
        if attempt < 2:
            time.sleep(rng.uniform(1.5, 4.0))
            if all(p.poll() is None for p in procs):
                kills += 1
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.communicate(timeout=60)
            continue
        for proc in procs:
            _finish(proc)
    assert kills >= 1, "the run was killed at least once"
    two = export(cfg, tmp_path / "s", tmp_path, "killed.jsonl")
    _assert_equal_where_calm(base, export(one_cfg, tmp_path / "one", tmp_path), two)
    changes = [c for f in sorted(tmp_path.glob("c*-*.jsonl")) for c in read_jsonl(f)]
    unique = {c["id"]: c for c in changes}
    _assert_folds_to(list(unique.values()), two)
