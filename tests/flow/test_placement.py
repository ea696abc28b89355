"""Shard keys land on the workers `flows.placement` plans for them: checked against Bytewax
itself, whose worker threads place keys exactly as its processes do."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.run import cli_main
from bytewax.testing import TestingSink

from flows.placement import GRAPH_SHARE, plan, shard_keys, shard_of_key, worker_of


class _Keys(DynamicSource[str]):
    """Every key once, from worker 0; records which thread is which worker."""

    def __init__(self, keys: list[str], threads: dict[int, int]) -> None:
        self._keys = keys
        self._threads = threads

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Once:
        self._threads[threading.get_ident()] = worker_index
        return _Once(self._keys if worker_index == 0 else [])


class _Once(StatelessSourcePartition[str]):
    def __init__(self, items: list[str]) -> None:
        self._items: list[str] | None = items

    def next_batch(self) -> list[str]:
        if self._items is None:
            raise StopIteration
        items, self._items = self._items, None
        return items


def _bytewax_places(keys: list[str], workers: int) -> dict[str, int]:
    threads: dict[int, int] = {}
    placed: dict[str, int] = {}

    def record(state: Any, key: str) -> tuple[Any, str]:
        placed[key] = threads[threading.get_ident()]
        return state, key

    flow = Dataflow("placement")
    keyed = op.key_on("key", op.input("in", flow, _Keys(keys, threads)), lambda k: k)
    op.output("out", op.stateful_map("place", keyed, record), TestingSink([]))
    cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
    return placed


@pytest.mark.parametrize("workers", [2, 3])
def test_keys_land_where_planned(workers: int) -> None:
    graph, keys = shard_keys(64, workers)
    placed = _bytewax_places([graph, *keys], workers)
    assert placed[graph] == 0
    assert [placed[k] for k in keys] == plan(64, workers)
    assert [shard_of_key(k) for k in keys] == list(range(64))
    assert all(worker_of(k, workers) == w for k, w in placed.items())


def test_the_graph_worker_takes_a_smaller_share() -> None:
    counts = Counter(plan(256, 2))
    expected = (0.5 - GRAPH_SHARE) / (1 - GRAPH_SHARE) * 256
    assert abs(counts[0] - expected) <= 1 and counts[0] + counts[1] == 256
    assert Counter(plan(256, 8))[0] == 0  # an eighth of the work is less than the graph's
    assert plan(10, 1) == [0] * 10
