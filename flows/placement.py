"""Which worker of a cluster applies which shard (several processes).

Bytewax sends a key to worker ``siphash13(key) % workers`` (Rust's `DefaultHasher` over the
key's UTF-8 bytes and a 0xff terminator; `tests/flow/test_placement.py` checks this against
Bytewax itself). Hashing spreads the shard keys about evenly, but the worker that also holds
the identity step (the `graph` key) then does the most work and sets the pace. So each shard
gets a Bytewax key chosen to land on a planned worker: the graph's worker takes a smaller share
of the shards. Correctness does not depend on any of this, only the balance does: a key that
lands elsewhere is applied there all the same.
"""

from __future__ import annotations

import struct
from functools import lru_cache

# The identity step's share of the work of a replay, measured with the 20 bench rules
# (benchmarks/RESULTS.md): the graph's worker takes that much less of the profile work.
GRAPH_SHARE = 0.17

_MASK = (1 << 64) - 1


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with a zero key: what Rust's `DefaultHasher::new()` computes."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573
    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        (m,) = struct.unpack_from("<Q", data, i)
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    last = (len(data) & 0xFF) << 56
    for i, byte in enumerate(data[end:]):
        last |= byte << (8 * i)
    v3 ^= last
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker Bytewax gives a stateful step's key."""
    return siphash13(key.encode() + b"\xff") % workers


def _key_on(name: str, worker: int, workers: int) -> str:
    """`name`, or `name.1`, `name.2`, … : the first that lands on `worker`."""
    candidate, n = name, 0
    while worker_of(candidate, workers) != worker:
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def plan(shards: int, workers: int, graph_share: float = GRAPH_SHARE) -> list[int]:
    """The planned worker of each shard. Every worker should end up with the same work: the
    graph's worker (0) takes `1/workers - graph_share` of the whole in profile work (none if
    that is negative), the others share the rest equally; shards are dealt out in turn to
    whichever worker is furthest below its target."""
    if workers == 1:
        return [0] * shards
    graph_part = max(0.0, 1 / workers - graph_share) / (1 - graph_share)
    targets = [graph_part] + [(1 - graph_part) / (workers - 1)] * (workers - 1)
    counts = [0] * workers
    out: list[int] = []
    for i in range(shards):
        worker = max(range(workers), key=lambda w: targets[w] * (i + 1) - counts[w])
        counts[worker] += 1
        out.append(worker)
    return out


@lru_cache(maxsize=8)
def shard_keys(shards: int, workers: int) -> tuple[str, tuple[str, ...]]:
    """The graph step's Bytewax key (on worker 0) and each shard's (on its planned worker).
    A shard key starts with the shard's number: `int(key.split(".")[0])`."""
    graph = _key_on("graph", 0, workers)
    keys = tuple(_key_on(f"{s:04d}", w, workers) for s, w in enumerate(plan(shards, workers)))
    return graph, keys


def shard_of_key(key: str) -> int:
    return int(key.split(".", 1)[0])
