"""One engine per process and state directory, shared by the worker threads of the process,
opened lazily on the worker (flow factories have no side effects)."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax._bytewax import cli_main  # what `python -m bytewax.run` calls
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir

from config.settings import Settings
from flows import io
from operators import metrics
from operators.engine import Engine, Role
from operators.steps.positions import (
    GRAPH_PARTITIONS_KEY,
    GRAPH_WATERMARK_KEY,
    PARTITIONS_KEY,
    WATERMARK_KEY,
)
from operators.store import ROUTING_KEY, RocksStore, StoreError, open_store
from schemas.records import iso_ms

_lock = threading.Lock()
_stores: dict[Path, RocksStore] = {}
_engines: dict[tuple[Path, Role], Engine] = {}


def engine_for(
    settings: Settings,
    state_dir: Path,
    routing: str | None = None,
    *,
    outbox: bool = True,
    role: Role = "all",
    live: bool = False,
    partitions: frozenset[str] = frozenset(),
) -> Engine:
    """The process's engine for a state directory and role (with several processes, the
    identity step and the profile step have an engine each, over the same store). `routing`
    names how records are keyed (offsets and outboxes are per key), checked against what the
    state was built with."""
    path = state_dir.resolve()
    with _lock:
        if path not in _stores:
            store = open_store(path, cache_mb=settings.state.cache_mb)
            if routing is not None:
                try:
                    _check_routing(store, path, routing)
                except StoreError:
                    store.close()
                    raise
            _stores[path] = store
            metrics.watch_state_size(store.size_bytes)
        if (path, role) not in _engines:
            engine = Engine(
                settings,
                _stores[path],
                role=role,
                live=live,
                keep_outbox=outbox,
                partitions=partitions,
            )
            _engines[(path, role)] = engine
            _log_edit(engine)
        return _engines[(path, role)]


def _log_edit(engine: Engine) -> None:
    """One line when the audiences changed since the state last ran (ids only)."""
    edit = engine.rollout.edit
    if edit is None:
        return
    parts = [
        f"{what} {', '.join(ids)}"
        for what, ids in zip(("added", "changed", "removed"), edit, strict=True)
        if ids
    ]
    logging.getLogger("cdp.rollout").info(
        "audiences edited since this state last ran: %s; rolling out over the stored profiles",
        "; ".join(parts),
    )


def check_routing(state_dir: Path, routing: str) -> None:
    """Refuse, before starting, a run whose keying differs from the state's."""
    store = open_store(state_dir.resolve())
    try:
        _check_routing(store, state_dir, routing)
    finally:
        store.close()


def _check_routing(store: RocksStore, state_dir: Path, routing: str) -> None:
    held = store.get(ROUTING_KEY)
    if held is None:
        store.write({ROUTING_KEY: routing.encode()})
    elif held.decode() != routing:
        raise StoreError(
            f"state in {state_dir} was built with routing {held.decode()!r} and this run uses "
            f"{routing!r}: keep the same --workers and number of processes for a state "
            "directory (1 worker applies records in input order; more shard them); a state "
            "whose layout an earlier version made must be replayed into a new directory"
        )


def check_event_time(state_dir: Path, wall_ms: int, max_future_ms: int, *, reset: bool) -> None:
    """Refuse a state whose event time is further ahead of the wall clock than `max_future`
    (a record from a wrong clock moved it there before `time.max_future` kept such records
    out): a live worker would fire every pending timer at once and keep doing so. With
    `reset`, event time goes back to the wall clock instead."""
    store = open_store(state_dir.resolve())
    try:
        held = [int(raw) for key in (WATERMARK_KEY, GRAPH_WATERMARK_KEY) if (raw := store.get(key))]
        ahead = max(held, default=wall_ms) - wall_ms
        if ahead <= max_future_ms:
            return
        if reset:
            store.write(
                {
                    WATERMARK_KEY: str(wall_ms).encode(),
                    GRAPH_WATERMARK_KEY: str(wall_ms).encode(),
                    PARTITIONS_KEY: b"{}",
                    GRAPH_PARTITIONS_KEY: b"{}",
                }
            )
            return
    finally:
        store.close()
    raise StoreError(
        f"the event time of the state in {state_dir} is {iso_ms(wall_ms + ahead)}, "
        f"{ahead / 86_400_000:.1f} days ahead of the wall clock: a record from a wrong clock "
        "moved it there, and every timer due before then has fired early. The way out: "
        "replay the sources into a new state directory (the exact answer; time.max_future now "
        "keeps such records out), or start again with --reset-event-time to take event time "
        "back to the wall clock (windows pruned at the wrong time are not rebuilt: windowed "
        "audiences are right again once their windows have filled with new events)"
    )


def engines_of(state_dir: Path) -> list[Engine]:
    path = state_dir.resolve()
    with _lock:
        return [engine for (p, _), engine in _engines.items() if p == path]


def close_engines() -> None:
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
        _engines.clear()


def run_flow(
    flow: Dataflow,
    workers: int = 1,
    recovery_dir: Path | None = None,
    epoch_ms: int = 1000,
    *,
    addresses: list[str] | None = None,
    process_id: int | None = None,
) -> None:
    """Run in this process with `workers` worker threads until the input ends (or SIGINT /
    SIGTERM, which finish the current epoch and stop). With `recovery_dir`, Bytewax snapshots
    the input positions there, so a restarted run resumes where the last snapshot was."""
    recovery = None
    if recovery_dir is not None:
        if not recovery_dir.exists():
            # Initialise beside it and rename: a kill during the first start must not leave a
            # half-made recovery folder that every later start refuses.
            fresh = recovery_dir.with_name(f"{recovery_dir.name}.init-{os.getpid()}")
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(parents=True)
            init_db_dir(fresh, 1)  # type: ignore[no-untyped-call]
            try:
                os.replace(fresh, recovery_dir)
            except OSError:
                # Another process of the cluster made it first.
                shutil.rmtree(fresh, ignore_errors=True)
                if not recovery_dir.exists():
                    raise
        recovery = RecoveryConfig(str(recovery_dir))  # type: ignore[no-untyped-call]
    io.STOP.clear()
    io.RAW.reset()
    # The state lives in RocksDB, so the heap is many short-lived dicts: CPython's default
    # collection thresholds spend ~20 % of a replay traversing them (measured, 130k records).
    gc.set_threshold(50_000, 50, 1_000)
    gc.freeze()
    handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            addresses=addresses,
            process_id=process_id,
            workers_per_process=workers,
            epoch_interval=timedelta(milliseconds=epoch_ms),
            recovery_config=recovery,
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _stop(signum: int, frame: FrameType | None) -> None:
    """First signal: end every input, let the flow drain and the sinks flush. Second: now."""
    if io.STOP.is_set():
        raise KeyboardInterrupt
    io.STOP.set()
