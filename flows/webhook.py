"""Webhook destination: one HTTP POST of JSON per audience change.

Changes are posted over `concurrency` lanes at once, each a kept-alive connection; a profile's
changes always take the same lane, one after the other, so they arrive in the order they were
made. Retries connection errors, 408/425/429 and 5xx with exponential backoff (holding up only
that lane). A batch is written before the sink returns, so a slow endpoint slows the worker
instead of growing a queue: what waits in memory is one batch.

A failing endpoint must not hold up the other destinations for long: a change that fails after
its last attempt goes to the destination's spool (`flows.spool`); after `down_after` such
failures in a row the destination is down (`cdp_destination_up` 0, one log line): retries in
flight stop and every change goes to the spool without a request, so the flow runs at full
speed again. A background thread tries the oldest spooled change every `retry_every`; when it
goes through the destination is up (one log line) and the spool is delivered in order. While a
profile has changes in the spool, its new ones join them there, so none overtakes another; a
change the endpoint refuses (another 4xx) is a dead letter with the reason. `cdp redeliver`
delivers a spool when no worker runs.

Every POST carries `Idempotency-Key: <id>` (of the audience change or journey send; the same on
every attempt). Journey sends are posted once: the ids delivered are kept in the destination's
ledger (`flows.delivered`), and a send emitted again after a crash is not posted again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from config.settings import DestinationSettings
from flows.delivered import Ledger
from flows.endpoint import Endpoint, Item, Post, PostResult, as_post, lane_of
from flows.spool import Breaker, Redelivery, Spool, Spooled
from operators import metrics
from schemas.records import DeadLetter, Origin

log = logging.getLogger("cdp.destinations")

__all__ = [
    "Endpoint", "Item", "Post", "Redelivery", "WebhookDestination", "WebhookSink", "lane_of",
]  # fmt: skip


class WebhookDestination:
    """One webhook destination in one process: its breaker, its spool and its ledger of
    delivered journey sends, shared by the process's workers, and the thread that re-delivers
    the spool every `retry_every`. Without a spool directory a change that fails is a dead
    letter (as before spools), as is one the endpoint refuses (a status other than
    408/425/429/5xx) in every case. Without a ledger directory sends are at-least-once."""

    def __init__(
        self,
        dest: DestinationSettings,
        dead: Callable[[list[bytes]], None],
        spool_dir: Path | None,
        ledger_dir: Path | None = None,
    ) -> None:
        assert dest.url is not None
        self.dest = dest
        self.dead = dead
        self.breaker = Breaker(dest.down_after)
        self.spool = None if spool_dir is None else Spool(spool_dir, dest.name)
        self._ledger_dir = ledger_dir
        self._ledger: Ledger | None = None  # opened with the first send (most have none)
        self._ledger_lock = threading.Lock()
        self._lanes = [
            Endpoint(dest.url, dest.headers, dest.timeout_s) for _ in range(dest.concurrency)
        ]
        self._pool = ThreadPoolExecutor(dest.concurrency, thread_name_prefix=f"spool-{dest.name}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.DESTINATION_UP.labels(dest.name).set(1)
        self.gauge()

    def start(self) -> None:
        """Re-deliver the spool in the background: at once (what a previous run left), then
        every `retry_every` while it holds changes."""
        if self.spool is not None:
            self._thread = threading.Thread(
                target=self._run, name=f"spool-{self.dest.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.dest.retry_every_s
            if self.spool is not None and self.spool.count:
                try:
                    self.redeliver()
                except (OSError, ValueError) as exc:  # a full disk, say: tried again later
                    log.warning("destination %s: spool: %s", self.dest.name, exc)

    def ledger(self) -> Ledger | None:
        """The ledger of delivered journey sends (None without a ledger directory), opened
        (and pruned) when first needed: a destination that takes no sends has none on disk."""
        if self._ledger_dir is None:
            return None
        with self._ledger_lock:
            if self._ledger is None:
                path = self._ledger_dir / self.dest.name
                self._ledger = Ledger(path, self.dest.dedup_window_ms)
            return self._ledger

    def delivered(self, send_id: str, send: bool) -> bool:
        """A journey send this destination delivered already (an outbox replay re-emits it):
        not to be posted again."""
        if not send or (ledger := self.ledger()) is None or not ledger.has(send_id):
            return False
        metrics.SENDS_SKIPPED.labels(self.dest.name).inc()
        return True

    def _delivered_now(self, post_id: str, send: bool) -> None:
        if send and (ledger := self.ledger()) is not None:
            ledger.add(post_id)

    def deliver(self, lane: Endpoint, post: Post) -> PostResult:
        """One change or send, with retries that stop as soon as the destination is down."""
        dest, down = self.dest, self.breaker.down
        if self.spool is None:
            result = lane.post(
                post.body, max_attempts=dest.max_attempts, backoff_ms=dest.backoff_ms, key=post.id
            )
        else:
            result = lane.post(
                post.body,
                max_attempts=dest.max_attempts,
                backoff_ms=dest.backoff_ms,
                key=post.id,
                sleep=down.wait,
                give_up=down.is_set,
            )
        if result.ok:
            self._delivered_now(post.id, post.send)
        if self.spool is None:
            return result
        if not result.given_up:
            self._note(self.breaker.record(result.ok or result.final), result.problem)
        return result

    def _note(self, change: str | None, problem: str) -> None:
        name = self.dest.name
        if change == "down":
            metrics.DESTINATION_UP.labels(name).set(0)
            log.warning(
                "destination %s is down: %d deliveries in a row failed (last: %s); its changes "
                "wait in %s, the oldest tried every %s",
                *(name, self.dest.down_after, problem, self._spool_path(), self.dest.retry_every),
            )
        elif change == "up":
            metrics.DESTINATION_UP.labels(name).set(1)
            log.info("destination %s is back up; delivering its spool", name)

    def _spool_path(self) -> Path | None:
        return None if self.spool is None else self.spool.path

    def gauge(self) -> None:
        metrics.SPOOLED.labels(self.dest.name).set(0 if self.spool is None else self.spool.count)

    def redeliver(self, probe_timeout_s: float | None = None) -> Redelivery:
        """Deliver the spool now, in spool order on each lane (so in order per profile),
        each change once; while the destination is down, only its oldest change is tried
        first. Stops at the first change that fails (it and what follows stay)."""
        spool, done = self.spool, Redelivery()
        assert spool is not None
        if self.breaker.down.is_set() and not self._probe(spool, done, probe_timeout_s):
            return done
        offset = 0
        while True:
            chunk, offset = spool.read(offset, 512)
            if not chunk:
                break
            work: list[list[Spooled]] = [[] for _ in self._lanes]
            for entry in chunk:
                work[lane_of(entry.profile, len(work))].append(entry)
            running = [
                self._pool.submit(self._drain, self._lanes[n], entries, done)
                for n, entries in enumerate(work)
                if entries
            ]
            if not all([task.result() for task in running]):
                break
        spool.compact()
        self.gauge()
        return done

    def _probe(self, spool: Spool, done: Redelivery, timeout_s: float | None) -> bool:
        """One try of the oldest change: True if the destination is back."""
        oldest, _ = spool.read(0, 1)
        while oldest and self.delivered(oldest[0].id, oldest[0].send):
            self._skipped(spool, oldest[0], done)
            oldest, _ = spool.read(0, 1)
        if not oldest:  # nothing to try it with: the next change will tell
            self._note(self.breaker.record(True), "")
            return True
        entry, dest = oldest[0], self.dest
        lane = self._lanes[0]
        if timeout_s is not None:
            lane = Endpoint(dest.url or "", dest.headers, timeout_s)
        try:
            result = lane.post(entry.body, max_attempts=1, backoff_ms=0, key=entry.id)
        finally:
            if lane is not self._lanes[0]:
                lane.close()
        if not (result.ok or result.final):
            return False
        if result.ok:
            self._delivered_now(entry.id, entry.send)
        self._settled(spool, entry, result, done)
        self._note(self.breaker.record(True), "")
        return True

    def _settled(self, spool: Spool, entry: Spooled, result: PostResult, done: Redelivery) -> None:
        if result.final:
            self.dead([self.letter(entry.body, 0, result)])
        else:
            metrics.REDELIVERED.labels(self.dest.name).inc()
        done.add(refused=result.final)
        spool.settle(entry)

    def _skipped(self, spool: Spool, entry: Spooled, done: Redelivery) -> None:
        """A send in the spool that was delivered already (by a run killed before it could
        settle it here): settled without a request."""
        done.add(already=True)
        spool.settle(entry)

    def _drain(self, lane: Endpoint, entries: list[Spooled], done: Redelivery) -> bool:
        """One lane's share of a chunk, in order, up to the first that fails: whether all
        went (delivered, or refused and dead-lettered)."""
        spool = self.spool
        assert spool is not None
        for entry in entries:
            if self.delivered(entry.id, entry.send):
                self._skipped(spool, entry, done)
                continue
            result = self.deliver(lane, Post(entry.profile, entry.body, entry.id, entry.send))
            if not (result.ok or result.final):
                return False
            self._settled(spool, entry, result, done)
        return True

    def reason(self, result: PostResult) -> str:
        return f"webhook {self.dest.name}: {result.problem} after {result.attempts} attempts"

    def letter(self, body: bytes, index: int, result: PostResult) -> bytes:
        origin = Origin(f"destination:{self.dest.name}", 0, index)
        return DeadLetter(origin, body, self.reason(result)).to_json()

    def close(self, *, last_try: bool = True) -> None:
        """Stop the background thread; a last try of the spool, so that a replay that ends
        soon after the destination is back leaves nothing (when down, its probe waits 1 s
        at most for an answer: a replay's end is not held up for `timeout_s`); let go."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if last_try and self.spool is not None and self.spool.count:
                self.redeliver(probe_timeout_s=min(self.dest.timeout_s, 1.0))
        finally:
            self._pool.shutdown(wait=True)
            for lane in self._lanes:
                lane.close()
            if self.spool is not None:
                self.spool.close()
            with self._ledger_lock:
                if self._ledger is not None:
                    self._ledger.close()
                    self._ledger = None


class _Shared:
    """The process's `WebhookDestination`s, one per spool and ledger, counted by the
    partitions using them (Bytewax builds one partition per worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[tuple[Path | None, ...], tuple[WebhookDestination, int]] = {}

    def acquire(
        self,
        dest: DestinationSettings,
        dead: Callable[[list[bytes]], None],
        spool_dir: Path | None,
        ledger_dir: Path | None = None,
    ) -> WebhookDestination:
        folders = (spool_dir, ledger_dir)
        key = tuple(None if d is None else (d / dest.name).resolve() for d in folders)
        with self._lock:
            hook, users = self._hooks.get(key, (None, 0))
            if hook is None:
                hook = WebhookDestination(dest, dead, spool_dir, ledger_dir)
                hook.start()
            self._hooks[key] = (hook, users + 1)
            return hook

    def release(self, hook: WebhookDestination) -> None:
        with self._lock:
            key = next(k for k, (h, _) in self._hooks.items() if h is hook)
            users = self._hooks[key][1] - 1
            if users:
                self._hooks[key] = (hook, users)
                return
            del self._hooks[key]
        hook.close()


_SHARED = _Shared()


class _WebhookPartition(StatelessSinkPartition[Item]):
    def __init__(
        self,
        dest: DestinationSettings,
        dead: Callable[[list[bytes]], None],
        spool_dir: Path | None,
        ledger_dir: Path | None = None,
    ) -> None:
        assert dest.url is not None
        self._dead = dead
        # A spool or a ledger is a file one process holds: its workers share one.
        self._shared = spool_dir is not None or ledger_dir is not None
        if self._shared:
            self._hook = _SHARED.acquire(dest, dead, spool_dir, ledger_dir)
        else:
            self._hook = WebhookDestination(dest, dead, None)
        self._lanes = [
            Endpoint(dest.url, dest.headers, dest.timeout_s) for _ in range(dest.concurrency)
        ]
        self._pool = ThreadPoolExecutor(dest.concurrency, thread_name_prefix=f"hook-{dest.name}")

    def write_batch(self, items: Sequence[Item]) -> None:
        work: list[list[tuple[int, Post]]] = [[] for _ in self._lanes]
        for index, item in enumerate(items):
            post = as_post(item)
            work[lane_of(post.profile, len(work))].append((index, post))
        running = [
            self._pool.submit(self._post_all, self._lanes[lane], part)
            for lane, part in enumerate(work)
            if part
        ]
        failed = sorted(letter for task in running for letter in task.result())
        spool = self._hook.spool
        if spool is not None:
            spool.sync()  # what is spooled is on disk before the batch counts as written
            self._hook.gauge()
        if failed:
            self._dead([letter for _, letter in failed])

    def _post_all(
        self, lane: Endpoint, part: Sequence[tuple[int, Post]]
    ) -> list[tuple[int, bytes]]:
        """One lane's share of a batch, in order: each change or send delivered (a send
        delivered before is not posted again), or put in the spool (the destination is
        down, its profile has changes there already, or it failed after its last attempt),
        or a dead letter (refused, or failed with no spool); the dead letters, by place in
        the batch."""
        hook = self._hook
        spool, down = hook.spool, hook.breaker.down
        failed: list[tuple[int, bytes]] = []
        for index, post in part:
            profile, body = post.profile, post.body
            if hook.delivered(post.id, post.send):
                continue
            is_down = down.is_set()
            waits = _DOWN if is_down else _BEHIND
            if spool is not None and spool.put(
                profile, body, waits, force=is_down, id=post.id, send=post.send
            ):
                continue
            result = hook.deliver(lane, post)
            if result.ok:
                continue
            if spool is not None and not result.final:
                reason = hook.reason(result)
                spool.put(profile, body, reason, force=True, id=post.id, send=post.send)
            else:
                failed.append((index, hook.letter(body, index, result)))
        return failed

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for lane in self._lanes:
            lane.close()
        if self._shared:
            _SHARED.release(self._hook)
        else:
            self._hook.close()


_DOWN = "the destination was down"
_BEHIND = "behind an earlier change of its profile"


class WebhookSink(DynamicSink[Item]):
    """Takes `Post`s (or `(profile id, JSON body)` pairs: audience changes). With
    `spool_dir`, a failing destination holds up the flow only until it is down (`down_after`
    failed deliveries in a row): then its changes go to its spool (`flows.spool`) and are
    delivered when it is back. With `ledger_dir`, a journey send is posted once
    (`flows.delivered`)."""

    def __init__(
        self,
        dest: DestinationSettings,
        dead: Callable[[list[bytes]], None],
        spool_dir: Path | None = None,
        ledger_dir: Path | None = None,
    ) -> None:
        self._dest = dest
        self._dead = dead
        self._spool_dir = spool_dir
        self._ledger_dir = ledger_dir

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WebhookPartition:
        return _WebhookPartition(self._dest, self._dead, self._spool_dir, self._ledger_dir)
