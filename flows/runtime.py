"""One engine per process and state directory, shared by the worker threads of the process,
opened lazily on the worker (flow factories have no side effects)."""

from __future__ import annotations

import threading
from pathlib import Path

from bytewax._bytewax import cli_main  # what `python -m bytewax.run` calls
from bytewax.dataflow import Dataflow

from config.settings import Settings
from operators.engine import Engine
from operators.store import RocksStore, open_store

_lock = threading.Lock()
_engines: dict[Path, tuple[Engine, RocksStore]] = {}


def engine_for(settings: Settings, state_dir: Path) -> Engine:
    key = state_dir.resolve()
    with _lock:
        if key not in _engines:
            store = open_store(key)
            _engines[key] = (Engine(settings, store), store)
        return _engines[key][0]


def close_engines() -> None:
    with _lock:
        for _, store in _engines.values():
            store.close()
        _engines.clear()


def run_flow(flow: Dataflow, workers: int = 1) -> None:
    """Run in this process with `workers` worker threads, until the input ends."""
    cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
