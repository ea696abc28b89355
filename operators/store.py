"""State storage: one small interface, an in-memory and a RocksDB implementation, the
transaction and the codec. This is the only module that imports `rocksdict`.

Every step of a record's path declares the keys it owns next to its code
(`operators.steps.*`; `docs/architecture.md` has the whole layout). Keys are bytes, UTF-8;
identity-derived keys read `KIND/SSSS/Namespace:value`, `SSSS` the identity's logical shard.
Here: `meta/format` (the format version, written on first open and checked on every open) and
`meta/routing` (how records were keyed; a run must match).

Values are orjson, never pickle. Writes go through `Txn`: reads see the transaction's own
writes, and `commit` applies everything, offsets included, as one atomic WriteBatch.
"""

from __future__ import annotations

import heapq
import zlib
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import orjson
from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from schemas.records import Identity, parse_identity

FORMAT_VERSION = b"1"
FORMAT_KEY = b"meta/format"
ROUTING_KEY = b"meta/routing"


class StoreError(RuntimeError):
    pass


class Store(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def write(self, changes: Mapping[bytes, bytes | None]) -> None: ...
    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Keys under `prefix` in order, from `start` (a key under `prefix`) if given."""
        ...

    def delete_range(self, start: bytes, end: bytes) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A dict; for unit tests and the pure-function property tests."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {FORMAT_KEY: FORMAT_VERSION}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        low = start or prefix
        for key in sorted(k for k in self._data if k.startswith(prefix) and k >= low):
            yield key, self._data[key]

    def delete_range(self, start: bytes, end: bytes) -> None:
        for key in [k for k in self._data if start <= k < end]:
            del self._data[key]

    def close(self) -> None:
        pass


class RocksStore:
    """RocksDB through rocksdict, in raw (bytes) mode."""

    def __init__(self, path: Path, *, read_only: bool = False, cache_mb: int = 8) -> None:
        options = Options(raw_mode=True)
        # Most point reads on the hot path miss (an event id not seen before, an identity not
        # yet in the graph): a bloom filter answers those without reading a block of every
        # level. 6-10 % off the engine's time at 100k profiles (benchmarks/RESULTS.md).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(cache_mb << 20))
        options.set_block_based_table_factory(table)
        if read_only:
            if not path.exists():
                raise StoreError(f"no state at {path}: run a replay or a worker first")
            try:
                self._db = Rdict(
                    str(path),
                    options,
                    column_families=_cf(options),
                    access_type=AccessType.read_only(),
                )
            except Exception as exc:  # rocksdict raises a bare Exception (e.g. no CURRENT yet)
                raise StoreError(f"state at {path} cannot be read (yet): {exc}") from exc
        else:
            path.mkdir(parents=True, exist_ok=True)
            options.create_if_missing(True)
            try:
                self._db = Rdict(str(path), options, column_families=_cf(options))
            except Exception as exc:  # rocksdict raises a bare Exception for a held lock
                if "lock" in str(exc).lower():
                    raise StoreError(
                        f"state at {path} is in use by a running worker; stop it first, or send "
                        "the command through the privacy topic"
                    ) from exc
                raise
        version = self._db.get(FORMAT_KEY)
        if version is None and not read_only:
            self._db.put(FORMAT_KEY, FORMAT_VERSION)
        elif version != FORMAT_VERSION:
            found = "none" if version is None else version.decode(errors="replace")
            raise StoreError(
                f"state at {path} has format {found}, this version reads {FORMAT_VERSION.decode()}"
            )

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=start or prefix):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(prefix):
                break
            yield key, value

    def delete_range(self, start: bytes, end: bytes) -> None:
        self._db.delete_range(start, end)

    def size_bytes(self) -> float:
        """SST files plus memtables, as RocksDB reports them (0 once closed)."""
        total = 0
        for prop in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
            try:
                total += int(self._db.property_int_value(prop) or 0)
            except Exception:
                return 0.0
        return float(total)

    def compact(self) -> None:
        """Flush the memtables and compact every level: what is left on disk is the live data
        (the benchmarks' size of a state, whatever RocksDB last flushed or compacted)."""
        self._db.flush()
        self._db.compact_range(None, None)

    def close(self) -> None:
        self._db.close()


def _cf(options: Options) -> dict[str, Options]:
    """The options again for the default column family: on reopening a database, rocksdict
    opens its column families with default options otherwise (the bloom filter is lost)."""
    return {"default": options}


def process_dirs(state_dir: Path) -> list[Path]:
    """The per-process state directories of a run on several processes (empty otherwise)."""
    return sorted(p.parent for p in state_dir.glob("process-*/rocksdb"))


def open_store(state_dir: Path, *, read_only: bool = False, cache_mb: int = 8) -> RocksStore:
    return RocksStore(state_dir / "rocksdb", read_only=read_only, cache_mb=cache_mb)


def open_state(state_dir: Path) -> Store:
    """Read-only view of a state directory: one store, or the union of the stores of a run on
    several processes (the graph is in one of them, each profile in exactly one)."""
    parts = process_dirs(state_dir)
    if not parts or (state_dir / "rocksdb").exists():
        return open_store(state_dir, read_only=True)
    return UnionStore([open_store(p, read_only=True) for p in parts])


class UnionStore:
    """Reads over several stores whose keys do not overlap (or agree where they do)."""

    def __init__(self, stores: list[RocksStore]) -> None:
        self._stores = stores

    def get(self, key: bytes) -> bytes | None:
        for store in self._stores:
            value = store.get(key)
            if value is not None:
                return value
        return None

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        raise StoreError("the state of several processes is read-only here")

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        return heapq.merge(*(store.scan(prefix, start) for store in self._stores))

    def delete_range(self, start: bytes, end: bytes) -> None:
        raise StoreError("the state of several processes is read-only here")

    def close(self) -> None:
        for store in self._stores:
            store.close()


def shard_of(identity: Identity, shards: int) -> int:
    """Stable across processes and runs (unlike `hash`)."""
    return _shard_of(identity[0], identity[1], shards)


@lru_cache(maxsize=1 << 16)
def _shard_of(namespace: str, value: str, shards: int) -> int:
    return zlib.crc32(f"{namespace}:{value}".encode()) % shards


@lru_cache(maxsize=1 << 18)
def _identity_key(kind: str, namespace: str, value: str, shards: int) -> bytes:
    text = f"{namespace}:{value}"
    return f"{kind}/{zlib.crc32(text.encode()) % shards:04d}/{text}".encode()


def identity_key(kind: str, identity: Identity, shards: int) -> bytes:
    """`KIND/SSSS/Namespace:value`: keys by identity land in their shard's range (memoised:
    they are built several times per record)."""
    return _identity_key(kind, identity[0], identity[1], shards)


def identity_from_key(key: bytes) -> Identity:
    """`p/0042/Email:a@b.c` -> `("Email", "a@b.c")`."""
    return parse_identity(key.decode().split("/", 2)[2])


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def decode(raw: bytes) -> Any:
    return orjson.loads(raw)


class Txn:
    """Reads that see pending writes; one atomic write on commit.

    Decoded JSON values are cached, so a profile touched by many records in one batch is
    decoded and encoded once.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._raw: dict[bytes, bytes | None] = {}
        self._objects: dict[bytes, Any] = {}
        self._dirty: set[bytes] = set()
        # The keys written, for `scan` (a key only read holds what the store holds): sorted
        # runs, each at least twice as long as the next, and the keys written since the last
        # scan. A scan bisects each run instead of walking every key: a call of the pipeline
        # writes tens of thousands, and the history scans a profile's events on every merge
        # (benchmarks/RESULTS.md, session 6).
        self._runs: list[list[bytes]] = []
        self._new: list[bytes] = []

    def _written(self, key: bytes) -> None:
        if key not in self._raw and key not in self._dirty:
            self._new.append(key)

    def _sorted_runs(self) -> list[list[bytes]]:
        if self._new:
            run, runs = sorted(self._new), self._runs
            self._new = []
            while runs and len(runs[-1]) <= 2 * len(run):
                run = sorted(runs.pop() + run)  # two sorted runs: timsort merges them
            runs.append(run)
        return self._runs

    def get(self, key: bytes) -> bytes | None:
        if key in self._objects:
            obj = self._objects[key]
            return None if obj is None else encode(obj)
        if key in self._raw:
            return self._raw[key]
        return self.store.get(key)

    def get_json(self, key: bytes) -> Any:
        if key in self._objects:
            return self._objects[key]
        raw = self._raw[key] if key in self._raw else self.store.get(key)
        value = None if raw is None else decode(raw)
        self._objects[key] = value
        return value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The store's keys under `prefix` as this transaction sees them (its own writes and
        deletes included), in key order."""
        keys = {k for k, _ in self.store.scan(prefix)}
        for run in self._sorted_runs():
            at = bisect_left(run, prefix)
            while at < len(run) and run[at].startswith(prefix):
                keys.add(run[at])
                at += 1
        for key in sorted(keys):
            value = self.get(key)
            if value is not None:
                yield key, value

    def put(self, key: bytes, value: bytes) -> None:
        self._written(key)
        self._objects.pop(key, None)
        self._dirty.discard(key)
        self._raw[key] = value

    def put_json(self, key: bytes, value: Any) -> None:
        """Values handed in must not be mutated afterwards (the pure functions never do)."""
        self._written(key)
        self._raw.pop(key, None)
        self._objects[key] = value
        self._dirty.add(key)

    def delete(self, key: bytes) -> None:
        self._written(key)
        self._objects.pop(key, None)
        self._dirty.discard(key)
        self._raw[key] = None

    def changes(self) -> dict[bytes, bytes | None]:
        out = dict(self._raw)
        for key in self._dirty:
            obj = self._objects[key]
            out[key] = None if obj is None else encode(obj)
        return out

    def commit(self) -> None:
        changes = self.changes()
        if changes:
            self.store.write(changes)
        self._raw.clear()
        self._objects.clear()
        self._dirty.clear()
        self._runs.clear()
        self._new.clear()
