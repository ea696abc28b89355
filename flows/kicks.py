"""The rollout's input: at every start, one `Kick` per key of the profile step, so each key
brings its shard's profiles to the configured audience definitions (DESIGN §13) even when no
record ever reaches it. A kick for a state with nothing to roll out costs one lookup."""

from __future__ import annotations

from collections.abc import Callable

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from schemas.records import Kick


def kicks(shards: int, per_shard: bool, key: Callable[[int], str]) -> list[Kick]:
    """One kick for every shard (several keys), or one for the whole store (one key)."""
    if not per_shard:
        return [Kick(None, key(0))]
    return [Kick(shard, key(shard)) for shard in range(shards)]


class _Once(StatelessSourcePartition[Kick]):
    def __init__(self, items: list[Kick]) -> None:
        self._items: list[Kick] | None = items

    def next_batch(self) -> list[Kick]:
        if self._items is None:
            raise StopIteration
        items, self._items = self._items, None
        return items


class KickSource(DynamicSource[Kick]):
    """Emits the kicks once, on the first worker, then ends."""

    def __init__(self, items: list[Kick]) -> None:
        self._items = items

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Once:
        return _Once(self._items if worker_index == 0 else [])
