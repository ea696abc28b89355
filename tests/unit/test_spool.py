"""The breaker and the spool of a webhook destination, on a real temp dir; the webhook sink
with them against a real HTTP server on loopback (and a closed port)."""

from __future__ import annotations

import base64
import logging
import socket
import time
from pathlib import Path

import orjson
import pytest

from config.settings import DestinationSettings
from flows.spool import Breaker, Spool, SpoolBusy
from flows.webhook import WebhookDestination, WebhookSink
from operators import metrics
from tests.http_server import Server


def body(n: int, profile: str = "p_1") -> bytes:
    return orjson.dumps({"id": f"c{n}", "profile_id": profile, "n": n})


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_breaker_goes_down_after_failures_in_a_row_and_up_on_success() -> None:
    breaker = Breaker(3)
    assert [breaker.record(False), breaker.record(False)] == [None, None]
    assert breaker.record(True) is None  # a success in between: the count starts again
    assert [breaker.record(False) for _ in range(3)] == [None, None, "down"]
    assert breaker.down.is_set()
    assert breaker.record(False) is None  # down already: said once
    assert breaker.record(True) == "up" and not breaker.down.is_set()
    assert breaker.record(True) is None


def test_spool_keeps_order_holds_profiles_and_dedups_by_id(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "hook")
    try:
        assert not spool.put("p_1", body(1), "x", force=False)  # nothing waits: send it
        assert spool.put("p_1", body(1), "failed", force=True)
        assert spool.put("p_2", body(2, "p_2"), "down", force=True)
        assert spool.put("p_1", body(3), "behind", force=False)  # p_1 waits: joins it
        assert not spool.put("p_3", body(4, "p_3"), "x", force=False)
        assert spool.put("p_1", body(1), "again", force=True)  # the same id: kept once
        spool.sync()
        assert spool.count == 3 and spool.holds("p_1") and not spool.holds("p_3")
        entries, offset = spool.read(0, 10)
        assert [e.id for e in entries] == ["c1", "c2", "c3"]
        assert entries[0].body == body(1) and entries[0].reason == "failed"
        assert spool.read(offset, 10) == ([], offset)
        spool.settle(entries[0])
        spool.settle(entries[0])  # once only
        assert spool.count == 2 and spool.holds("p_1")
        # a change delivered from the spool and sent again (a restart) is not sent twice
        assert spool.put("p_9", body(1, "p_9"), "x", force=False)
        assert [e.id for e in spool.read(0, 10)[0]] == ["c2", "c3"]
    finally:
        spool.close()


def test_spool_survives_a_restart_and_a_torn_last_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "hook")
    for n in range(1, 4):
        spool.put("p_1", body(n), "down", force=True)
    spool.settle(spool.read(0, 1)[0][0])
    spool.close()
    with (tmp_path / "hook.jsonl").open("ab") as f:
        f.write(b'{"id":"c4","prof')  # killed in the middle of a line
    again = Spool(tmp_path, "hook")
    try:
        assert again.count == 2 and again.delivered_before == 1
        assert [e.id for e in again.read(0, 10)[0]] == ["c2", "c3"]
        again.put("p_1", body(5), "down", force=True)
        assert [e.id for e in again.read(0, 10)[0]] == ["c2", "c3", "c5"]
        for entry in again.read(0, 10)[0]:
            again.settle(entry)
        again.compact()
        assert (tmp_path / "hook.jsonl").stat().st_size == 0
        assert (tmp_path / "hook.done").stat().st_size == 0
    finally:
        again.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "hook")
    try:
        with pytest.raises(SpoolBusy, match="held by another process"):
            Spool(tmp_path, "hook")
    finally:
        spool.close()
    Spool(tmp_path, "hook").close()  # let go: free again


def _hook(url: str, **extra: object) -> DestinationSettings:
    fields: dict[str, object] = {
        "name": "hook", "kind": "webhook", "url": url, "concurrency": 4,
        "max_attempts": 3, "backoff_ms": 50, "timeout_s": 2, "down_after": 3,
        "retry_every": "100ms", **extra,
    }  # fmt: skip
    return DestinationSettings.model_validate(fields)


def test_a_dead_endpoint_is_down_soon_and_its_changes_wait_in_the_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = _hook(closed_port_url())
    dead: list[bytes] = []
    part = WebhookSink(dest, dead.extend, tmp_path).build("w", 0, 1)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, "cdp.destinations"):
        try:
            for batch in range(20):
                part.write_batch(
                    [(f"p_{n % 7}", body(batch * 50 + n, f"p_{n % 7}")) for n in range(50)]
                )
            assert metrics.DESTINATION_UP.labels("hook")._value.get() == 0
        finally:
            part.close()
    # down after the first few deliveries (each 3 attempts, 150 ms): then no request at all
    assert time.monotonic() - started < 10
    assert dead == []
    spooled = [orjson.loads(line) for line in (tmp_path / "hook.jsonl").read_bytes().splitlines()]
    assert sorted(c["body"]["n"] for c in spooled) == list(range(1000))
    for profile in (f"p_{n}" for n in range(7)):  # the lanes interleave; a profile keeps order
        order = [c["body"]["n"] for c in spooled if c["profile"] == profile]
        assert order == sorted(order)
    down = [r for r in caplog.records if "is down" in r.getMessage()]
    assert len(down) == 1 and "p_" not in down[0].getMessage()


def test_an_endpoint_that_comes_back_gets_everything_once_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Down after 3 failed deliveries (20 answers 503), up at the first probe that gets an
    answer, the spool delivered before newer changes of the same profiles."""
    srv = Server([503] * 20 + [400], keep_alive=True)
    dest = _hook(srv.url)
    dead: list[bytes] = []
    part = WebhookSink(dest, dead.extend, tmp_path).build("w", 0, 1)
    sent: list[bytes] = []
    with caplog.at_level(logging.INFO, "cdp.destinations"):
        try:
            for batch in range(40):
                items = [(f"p_{n % 5}", body(batch * 10 + n, f"p_{n % 5}")) for n in range(10)]
                part.write_batch(items)
                sent.extend(b for _, b in items)
                time.sleep(0.05)
        finally:
            part.close()
        srv.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is down" in m for m in messages) == 1
    assert sum("is back up" in m for m in messages) == 1
    # the first change to reach the endpoint after it is back is refused (400): a dead letter
    assert len(dead) == 1 and "HTTP 400" in orjson.loads(dead[0])["reason"]
    refused = orjson.loads(base64.b64decode(orjson.loads(dead[0])["raw_base64"]))
    received = [orjson.loads(b) for b in srv.bodies[20:]]  # after the 503s
    got = [c["id"] for c in received if c["id"] != refused["id"]]
    assert sorted(got) == sorted(orjson.loads(b)["id"] for b in sent if b != orjson.dumps(refused))
    assert len(got) == len(set(got))
    for profile in (f"p_{n}" for n in range(5)):
        order = [c["n"] for c in received if c["profile_id"] == profile and c != refused]
        assert order == sorted(order)
    assert (tmp_path / "hook.jsonl").stat().st_size == 0  # all delivered: emptied


def test_redelivery_stops_at_a_failure_and_sends_nothing_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "hook")
    for n in range(6):
        spool.put("p_1", body(n), "down", force=True)
    spool.close()
    srv = Server([200, 200, 503, 503, 503], keep_alive=True)
    try:
        dest = _hook(srv.url, concurrency=1)
        hook = WebhookDestination(dest, lambda _letters: None, tmp_path)
        first = hook.redeliver()
        hook.close(last_try=False)
        assert first.delivered == 2 and srv.bodies[:2] == [body(0), body(1)]
        hook = WebhookDestination(dest, lambda _letters: None, tmp_path)
        assert hook.spool is not None and hook.spool.delivered_before == 2
        second = hook.redeliver()
        hook.close(last_try=False)
        assert second.delivered == 4
        assert [orjson.loads(b)["n"] for b in srv.bodies] == [0, 1, 2, 2, 2, 2, 3, 4, 5]
    finally:
        srv.close()


def test_settings_of_the_breaker() -> None:
    dest = _hook("http://127.0.0.1:1/x", retry_every="2m", down_after=5)
    assert dest.retry_every_s == 120 and dest.down_after == 5
    defaults = DestinationSettings(name="h", kind="webhook", url="http://127.0.0.1:1/x")
    assert (defaults.down_after, defaults.retry_every_s) == (3, 30)
    for bad in ({"retry_every": "soon"}, {"retry_every": "0s"}, {"down_after": 0}):
        with pytest.raises(ValueError, match=r"retry_every|down_after"):
            _hook("http://127.0.0.1:1/x", **bad)


def test_a_line_torn_by_a_kill_is_cut_before_appending(tmp_path: Path) -> None:
    """SIGKILL in the middle of a write leaves a line without its end: the next run's first
    line must not be glued to it."""
    from flows import io  # noqa: PLC0415

    path = tmp_path / "changes.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    write = io.append_lines(path)
    try:
        write([b'{"d": 4}'])
    finally:
        io.close_files()
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"d": 4}\n'
    torn_only = tmp_path / "torn.jsonl"
    torn_only.write_bytes(b'{"x": ')
    write = io.append_lines(torn_only)
    try:
        write([b'{"y": 1}'])
    finally:
        io.close_files()
    assert torn_only.read_bytes() == b'{"y": 1}\n'
