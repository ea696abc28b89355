"""operators.steps.timers alone: the `t/` keys, the in-memory heap, and rebuilding it."""

from __future__ import annotations

from operators.steps.timers import PREFIX, Timers, parse_timer_key, timer_key
from operators.store import MemoryStore, Txn
from schemas.records import Identity

A: Identity = ("ECID", "d1")
B: Identity = ("Email", "a@x.com")
C: Identity = ("ECID", "d3")


def keys(store: MemoryStore) -> list[bytes]:
    return [k for k, _ in store.scan(PREFIX)]


def test_set_replace_and_delete_write_and_remove_the_keys() -> None:
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 100)
    txn.commit()
    assert keys(store) == [b"t/0000000000100/ECID:d1"]
    timers.set(txn, A, 100, 250)  # rescheduled: the old key goes
    txn.commit()
    assert keys(store) == [timer_key(250, A)]
    timers.set(txn, A, 250, None)  # no timer any more
    txn.commit()
    assert keys(store) == []


def test_keys_sort_by_time_and_round_trip_odd_values() -> None:
    odd: Identity = ("Email", "a/b:c@x.com")
    assert parse_timer_key(timer_key(42, odd)) == (42, odd)
    # Zero-padded: the store's byte order is time order.
    assert timer_key(9, A) < timer_key(10, A) < timer_key(10_000_000_000, A)


def test_due_yields_in_time_order_up_to_the_bound() -> None:
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 300)
    timers.set(txn, B, None, 100)
    timers.set(txn, C, None, 200)
    assert timers.next_ms() == 100
    assert list(timers.due(250)) == [(100, B), (200, C)]
    assert timers.next_ms() == 300
    assert list(timers.due(250)) == []  # taken off the heap
    assert list(timers.due(300)) == [(300, A)]
    assert timers.next_ms() is None


def test_due_sees_timers_pushed_while_iterating() -> None:
    """Firing a timer re-evaluates a profile, which may set another timer that is already due
    (earlier than the bound): it must fire in the same pass, in order."""
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 10)
    timers.set(txn, B, None, 30)
    seen = []
    for ts, who in timers.due(100):
        seen.append((ts, who))
        if who == A:
            timers.set(txn, C, None, 20)
            timers.set(txn, A, None, 500)  # beyond the bound: stays
    assert seen == [(10, A), (20, C), (30, B)]
    assert timers.next_ms() == 500


def test_superseded_entries_stay_on_the_heap_for_the_caller_to_skip() -> None:
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 100)
    timers.set(txn, A, 100, 200)
    assert list(timers.due(1_000)) == [(100, A), (200, A)]
    txn.commit()
    assert keys(store) == [timer_key(200, A)]  # the store only holds the live one


def test_fired_removes_the_key() -> None:
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 100)
    txn.commit()
    Timers.fired(txn, 100, A)
    txn.commit()
    assert keys(store) == []


def test_a_restarted_worker_rebuilds_the_heap_from_the_store() -> None:
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 300)
    timers.set(txn, B, None, 100)
    timers.set(txn, C, None, 200)
    timers.set(txn, C, 200, None)
    txn.commit()
    again = Timers(store)
    assert again.next_ms() == 100
    assert list(again.due(10_000)) == [(100, B), (300, A)]


def test_uncommitted_timers_are_not_found_after_a_restart() -> None:
    store = MemoryStore()
    timers, txn = Timers(store), Txn(store)
    timers.set(txn, A, None, 300)  # the call crashed before its commit
    assert Timers(store).next_ms() is None


def test_an_engine_that_holds_no_timers_loads_none() -> None:
    store = MemoryStore()
    txn = Txn(store)
    Timers(store).set(txn, A, None, 100)
    txn.commit()
    held_none = Timers(store, held=False)
    assert held_none.next_ms() is None
    assert list(held_none.due(10**15)) == []
    assert keys(store) == [timer_key(100, A)]  # left for the profile step
