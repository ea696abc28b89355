"""Journey sends reach a webhook endpoint once: the ledger of delivered ids on a real RocksDB
in a temp dir, the webhook sink and the spool with it against a real HTTP server on loopback
(and a closed port). Every POST carries `Idempotency-Key`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from config.settings import DestinationSettings, Settings
from flows.delivered import Ledger
from flows.redeliver import redeliver
from flows.spool import Spool, Spooled
from flows.webhook import Post, WebhookDestination, WebhookSink
from operators import metrics
from operators.store import StoreError
from tests.http_server import Server

DAY_MS = 86_400_000


def send_post(n: int, profile: str = "p_1") -> Post:
    body = orjson.dumps({"id": f"s{n}", "type": "journey_send", "profile_id": profile, "n": n})
    return Post(profile, body, f"s{n}", send=True)


def change_post(n: int, profile: str = "p_1") -> Post:
    return Post(profile, orjson.dumps({"id": f"c{n}", "profile_id": profile, "n": n}), f"c{n}")


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def _hook(url: str, **extra: object) -> DestinationSettings:
    fields: dict[str, object] = {
        "name": "hook", "kind": "webhook", "url": url, "concurrency": 2,
        "max_attempts": 2, "backoff_ms": 20, "timeout_s": 2, "down_after": 2,
        "retry_every": "100ms", **extra,
    }  # fmt: skip
    return DestinationSettings.model_validate(fields)


def _skipped(name: str = "hook") -> float:
    return float(metrics.SENDS_SKIPPED.labels(name)._value.get())


# -- the ledger --


def test_ledger_keeps_ids_across_a_reopen(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "hook", 7 * DAY_MS)
    try:
        assert not ledger.has("s1")
        ledger.add("s1")
        ledger.add("s2")
        assert ledger.has("s1") and ledger.has("s2") and not ledger.has("s3")
    finally:
        ledger.close()
    again = Ledger(tmp_path / "hook", 7 * DAY_MS)  # a new process
    try:
        assert again.pruned == 0 and again.has("s1") and again.has("s2")
    finally:
        again.close()


def test_ledger_prunes_ids_older_than_its_window_at_open(tmp_path: Path) -> None:
    now = 100 * DAY_MS
    ledger = Ledger(tmp_path / "hook", 7 * DAY_MS, now_ms=now)
    try:
        ledger.add("old", now_ms=now - 8 * DAY_MS)
        ledger.add("edge", now_ms=now - 7 * DAY_MS)  # exactly the window: kept
        ledger.add("new", now_ms=now - DAY_MS)
        ledger.add("again", now_ms=now - 9 * DAY_MS)
        ledger.add("again", now_ms=now - 2 * DAY_MS)  # delivered again: its newer time counts
    finally:
        ledger.close()
    reopened = Ledger(tmp_path / "hook", 7 * DAY_MS, now_ms=now)
    try:
        assert reopened.pruned == 1
        assert not reopened.has("old")
        assert all(reopened.has(i) for i in ("edge", "new", "again"))
        assert reopened.prune(now + 30 * DAY_MS) == 3  # everything is old a month later
        assert not any(reopened.has(i) for i in ("edge", "new", "again"))
    finally:
        reopened.close()


def test_a_ledger_open_for_weeks_prunes_as_it_goes(tmp_path: Path) -> None:
    now = 100 * DAY_MS
    ledger = Ledger(tmp_path / "hook", 7 * DAY_MS, now_ms=now)
    try:
        ledger.add("day-0", now_ms=now)
        for day in range(1, 10):
            ledger.add(f"day-{day}", now_ms=now + day * DAY_MS)
        assert not ledger.has("day-0") and not ledger.has("day-1")  # past the 7-day window
        assert all(ledger.has(f"day-{d}") for d in range(2, 10))
        assert ledger.pruned == 2
    finally:
        ledger.close()


def test_dedup_window_setting() -> None:
    dest = _hook("http://127.0.0.1:1/x")
    assert dest.dedup_window == "7d" and dest.dedup_window_ms == 7 * DAY_MS
    assert _hook("http://127.0.0.1:1/x", dedup_window="36h").dedup_window_ms == 36 * 3_600_000
    with pytest.raises(ValueError, match="dedup_window"):
        _hook("http://127.0.0.1:1/x", dedup_window="0s")


# -- the webhook sink --


def test_a_send_replayed_reaches_the_endpoint_once_with_its_key(tmp_path: Path) -> None:
    srv = Server([], keep_alive=True)
    dest = _hook(srv.url)
    skipped = _skipped()
    try:
        part = WebhookSink(dest, lambda _l: None, tmp_path / "spool", tmp_path / "delivered")
        hook = part.build("w", 0, 1)
        try:
            hook.write_batch([send_post(1), change_post(1), send_post(2, "p_2")])
            hook.write_batch([send_post(1), change_post(1)])  # an outbox replay: the same ids
        finally:
            hook.close()
        # a new process (the ledger reopened) after a SIGKILL re-emits its outbox again
        hook = part.build("w", 0, 1)
        try:
            hook.write_batch([send_post(1), send_post(2, "p_2"), send_post(3)])
        finally:
            hook.close()
        ids = [orjson.loads(b)["id"] for b in srv.bodies]
        # sends once each; the audience change at least once (its consumer dedupes by id)
        assert sorted(ids) == ["c1", "c1", "s1", "s2", "s3"]
        assert [h["Idempotency-Key"] for h in srv.headers] == ids
        assert _skipped() - skipped == 3
        assert (tmp_path / "delivered" / "hook").is_dir()
    finally:
        srv.close()


def test_audience_changes_alone_open_no_ledger(tmp_path: Path) -> None:
    srv = Server([], keep_alive=True)
    try:
        sink = WebhookSink(_hook(srv.url), lambda _l: None, None, tmp_path / "delivered")
        hook = sink.build("w", 0, 1)
        try:
            hook.write_batch([change_post(1), ("p_2", orjson.dumps({"id": "c2"}))])
        finally:
            hook.close()
        assert [h["Idempotency-Key"] for h in srv.headers] == ["c1", "c2"]
        assert not (tmp_path / "delivered").exists()
    finally:
        srv.close()


def test_a_send_that_failed_is_posted_again_and_a_refused_one_is_a_dead_letter(
    tmp_path: Path,
) -> None:
    """Only a 2xx puts a send in the ledger; with no spool a failed one is a dead letter."""
    srv = Server([503, 503, 400], keep_alive=True)
    dead: list[bytes] = []
    try:
        sink = WebhookSink(_hook(srv.url, concurrency=1), dead.extend, None, tmp_path)
        hook = sink.build("w", 0, 1)
        try:
            hook.write_batch([send_post(1)])  # 503, 503: failed, a dead letter
            hook.write_batch([send_post(2)])  # 400: refused, a dead letter
            hook.write_batch([send_post(1), send_post(2)])  # not delivered: posted again
            hook.write_batch([send_post(1), send_post(2)])  # delivered now: not again
        finally:
            hook.close()
        assert len(dead) == 2
        assert [h["Idempotency-Key"] for h in srv.headers] == ["s1", "s1", "s2", "s1", "s2"]
    finally:
        srv.close()


def test_sends_in_the_spool_are_delivered_once_when_the_endpoint_is_back(
    tmp_path: Path,
) -> None:
    spool_dir, ledger_dir = tmp_path / "spool", tmp_path / "delivered"
    down = _hook(closed_port_url())
    hook = WebhookSink(down, lambda _l: None, spool_dir, ledger_dir).build("w", 0, 1)
    try:
        hook.write_batch([send_post(n) for n in range(6)] + [change_post(1)])
        hook.write_batch([send_post(0)])  # re-emitted while waiting: kept once
    finally:
        hook.close()
    lines = [orjson.loads(x) for x in (spool_dir / "hook.jsonl").read_bytes().splitlines()]
    assert [x["id"] for x in lines] == [f"s{n}" for n in range(6)] + ["c1"]
    assert [x.get("send", False) for x in lines] == [True] * 6 + [False]
    srv = Server([], keep_alive=True)
    try:
        up = _hook(srv.url)
        hook = WebhookSink(up, lambda _l: None, spool_dir, ledger_dir).build("w", 0, 1)
        try:
            hook.write_batch([send_post(6, "p_2")])
            spool = hook._hook.spool
            assert spool is not None
            waited = time.monotonic() + 20  # the spool thread delivers it at start
            while spool.count and time.monotonic() < waited:
                time.sleep(0.02)
            assert spool.count == 0
            hook.write_batch([send_post(n) for n in range(7)])  # an outbox replay
        finally:
            hook.close()
        ids = sorted(orjson.loads(b)["id"] for b in srv.bodies)
        assert ids == ["c1"] + [f"s{n}" for n in range(7)]
        keys = [h["Idempotency-Key"] for h in srv.headers]
        assert keys == [orjson.loads(b)["id"] for b in srv.bodies]
    finally:
        srv.close()


def test_redeliver_skips_a_spooled_send_the_ledger_has_and_reads_old_spools(
    tmp_path: Path,
) -> None:
    """A run killed after the endpoint took a spooled send but before the spool recorded it:
    `cdp redeliver` does not post it again. A spool line written before sends existed (no
    `send` key) is an audience change and still delivers."""
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, "hook")
    try:
        post = send_post(1)
        spool.put(post.profile, post.body, "down", force=True, id=post.id, send=True)
        spool.put("p_3", change_post(3, "p_3").body, "down", force=True)
        spool.put("p_2", send_post(2, "p_2").body, "down", force=True, id="s2", send=True)
    finally:
        spool.close()
    old = b'{"id":"c9","profile":"p_9","reason":"down","body":{"id":"c9","n":9}}\n'
    with (spool_dir / "hook.jsonl").open("ab") as f:
        f.write(old)
    assert Spooled.from_line(old[:-1]).send is False
    ledger = Ledger(tmp_path / "delivered" / "hook", DAY_MS)
    ledger.add("s1")
    ledger.close()
    srv = Server([], keep_alive=True)
    try:
        dest = {"name": "hook", "kind": "webhook", "url": srv.url}
        settings = Settings.model_validate(
            {
                "namespaces": [{"name": "CRMID"}],
                "sources": [],
                "destinations": [dest],
                "dead_letters": {"path": str(tmp_path / "dl.jsonl")},
            }
        )
        outcome = redeliver(settings, "hook", tmp_path)
        assert (outcome.delivered, outcome.delivered_before, outcome.left) == (3, 1, 0)
        assert sorted(h["Idempotency-Key"] for h in srv.headers) == ["c3", "c9", "s2"]
        again = WebhookDestination(_hook(srv.url), lambda _l: None, None, tmp_path / "delivered")
        try:
            assert again.delivered("s2", True)  # redeliver wrote it in the ledger
            assert not again.delivered("c3", False)  # audience changes never use it
        finally:
            again.close()
    finally:
        srv.close()


_KILLED_AFTER_DELIVERY = """
import os, signal, sys
from pathlib import Path
import orjson
from config.settings import DestinationSettings
from flows.webhook import Post, WebhookSink

url, state = sys.argv[1], Path(sys.argv[2])
dest = DestinationSettings(name="hook", kind="webhook", url=url, concurrency=2)
hook = WebhookSink(dest, lambda _l: None, state / "spool", state / "delivered").build("w", 0, 1)
posts = []
for n in range(1, 4):
    body = orjson.dumps({"id": f"s{n}", "type": "journey_send", "n": n})
    posts.append(Post(f"p_{n}", body, f"s{n}", send=True))
hook.write_batch(posts)
os.kill(os.getpid(), signal.SIGKILL)  # the sends went out; nothing closed or flushed
"""


def test_a_process_killed_after_posting_sends_does_not_post_them_again(tmp_path: Path) -> None:
    """The ledger of a SIGKILLed process keeps what it delivered: the outbox replay of the
    next process posts only the send it had not made yet."""
    srv = Server([], keep_alive=True)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _KILLED_AFTER_DELIVERY, srv.url, str(tmp_path)],
            cwd=Path(__file__).resolve().parents[2],
            timeout=120,
            check=False,
        )
        assert done.returncode == -signal.SIGKILL
        assert sorted(h["Idempotency-Key"] for h in srv.headers) == ["s1", "s2", "s3"]
        sink = WebhookSink(
            _hook(srv.url), lambda _l: None, tmp_path / "spool", tmp_path / "delivered"
        )
        hook = sink.build("w", 0, 1)
        try:
            replay = [send_post(n, f"p_{n}") for n in range(1, 5)]
            hook.write_batch(replay)
        finally:
            hook.close()
        assert sorted(h["Idempotency-Key"] for h in srv.headers) == ["s1", "s2", "s3", "s4"]
    finally:
        srv.close()


def test_a_ledger_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "hook", DAY_MS)
    try:
        with pytest.raises(StoreError, match="ledger of delivered journey sends"):
            Ledger(tmp_path / "hook", DAY_MS)
    finally:
        ledger.close()
