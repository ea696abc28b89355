import random
from pathlib import Path

import pytest

from flows.runtime import check_routing
from operators.store import FORMAT_KEY, MemoryStore, RocksStore, Store, StoreError, Txn


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return RocksStore(tmp_path / "db")


def test_txn_reads_its_own_writes_and_commits_atomically(store: Store) -> None:
    txn = Txn(store)
    txn.put_json(b"p/1", {"a": 1})
    txn.put(b"o/1", b"9")
    assert txn.get_json(b"p/1") == {"a": 1}
    assert store.get(b"p/1") is None  # nothing written before commit
    txn.commit()
    assert store.get(b"o/1") == b"9"
    assert Txn(store).get_json(b"p/1") == {"a": 1}


def test_reads_alone_write_nothing(store: Store) -> None:
    store.write({b"p/1": b"[1]"})
    txn = Txn(store)
    assert txn.get_json(b"p/1") == [1]
    assert txn.get_json(b"p/missing") is None
    assert txn.changes() == {}


def test_delete_and_prefix_scan_in_key_order(store: Store) -> None:
    store.write({b"t/0000000000002/b": b"", b"t/0000000000001/a": b"", b"u/x": b""})
    txn = Txn(store)
    txn.delete(b"t/0000000000002/b")
    txn.commit()
    assert [k for k, _ in store.scan(b"t/")] == [b"t/0000000000001/a"]


def test_format_version_is_written_and_checked(tmp_path: Path) -> None:
    db = RocksStore(tmp_path / "db")
    assert db.get(FORMAT_KEY) == b"1"
    db.write({FORMAT_KEY: b"999"})
    db.close()
    with pytest.raises(StoreError, match="format 999"):
        RocksStore(tmp_path / "db")


def test_read_only_open_of_missing_state_is_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no state"):
        RocksStore(tmp_path / "absent", read_only=True)


def test_rocks_store_keeps_its_table_options_when_reopened(tmp_path: Path) -> None:
    """rocksdict reopens column families with default options unless told: the bloom filter,
    which spares the many missing-key reads of the hot path, must survive a restart."""
    for _ in range(2):
        store = RocksStore(tmp_path / "db")
        store.write({b"k": b"v"})
        store.close()
    newest = max((tmp_path / "db").glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    assert "filter_policy=bloomfilter" in newest.read_text()


def test_a_state_refuses_another_keying(tmp_path: Path) -> None:
    """Offsets and outboxes are per Bytewax key: a state keeps the keying it was built with,
    including the shard layout of several processes (`processes:2x1:placed`)."""
    check_routing(tmp_path, "processes:2x1")  # as session 2's layout wrote it
    check_routing(tmp_path, "processes:2x1")
    with pytest.raises(StoreError, match=r"'processes:2x1'.*'processes:2x1:placed'.*earlier"):
        check_routing(tmp_path, "processes:2x1:placed")


def test_txn_scan_sees_its_own_reads_writes_and_deletes_in_key_order(store: Store) -> None:
    """Txn.scan against a model (a dict of what the store would hold after a commit), with
    scans between the writes: the keys the transaction holds are sorted lazily."""
    model = {b"h/a/1": b"1", b"h/a/3": b"3", b"h/b/1": b"1", b"h/a": b"0"}  # values: JSON
    store.write(model)
    txn = Txn(store)
    rng = random.Random(5)
    for step in range(400):
        key = f"h/{rng.choice('abc')}/{rng.randrange(6)}".encode()
        action = rng.randrange(4)
        if action == 0:
            txn.put(key, b"[%d]" % step)
            model[key] = b"[%d]" % step
        elif action == 1:
            txn.put_json(key, step)
            model[key] = b"%d" % step
        elif action == 2:
            txn.delete(key)
            model.pop(key, None)
        else:
            txn.get_json(key)  # a read is held too
        prefix = f"h/{rng.choice('abc')}/".encode()
        expected = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
        assert list(txn.scan(prefix)) == expected
    txn.commit()
    assert list(Txn(store).scan(b"h/")) == sorted(model.items())
