"""operators.steps.positions alone: applied input offsets, per-partition event time and the
watermark, on the in-memory store."""

from __future__ import annotations

from operators.steps.positions import (
    GRAPH_PARTITIONS_KEY,
    GRAPH_WATERMARK_KEY,
    PARTITIONS_KEY,
    WATERMARK_KEY,
    Positions,
    offset_key,
)
from operators.store import MemoryStore, Txn, decode
from tests.unit.steps.helpers import Feed, ev, settings


def positions(store: MemoryStore | None = None, **kw: bool | int) -> Positions:
    graph, live = bool(kw.get("graph", False)), bool(kw.get("live", False))
    lateness = int(kw.get("lateness_ms", 0))
    return Positions(store or MemoryStore(), graph=graph, live=live, lateness_ms=lateness)


def test_an_offset_is_applied_once_per_key_and_survives_a_commit() -> None:
    store = MemoryStore()
    pos, txn = positions(store), Txn(store)
    assert pos.first_time(txn, 1, "web", 0, 5)
    assert not pos.first_time(txn, 1, "web", 0, 5)  # re-delivered
    assert not pos.first_time(txn, 1, "web", 0, 3)  # earlier: applied already (offset order)
    assert pos.first_time(txn, 2, "web", 0, 5)  # another Bytewax key has its own offsets
    assert pos.first_time(txn, 1, "web", 1, 5)  # and another partition
    assert pos.first_time(txn, 1, "web", 0, 6)
    assert store.get(offset_key(1, "web", 0)) is None  # nothing written before the commit
    txn.commit()
    assert decode(store.get(offset_key(1, "web", 0)) or b"") == 6
    assert offset_key(1, "web", 0) == b"o/0001/web/0"
    fresh = Txn(store)  # a restarted worker reads the stored offset
    assert not positions(store).first_time(fresh, 1, "web", 0, 6)
    assert positions(store).first_time(fresh, 1, "web", 0, 7)


def test_the_watermark_is_the_lowest_partition_in_a_replay() -> None:
    pos = positions(lateness_ms=100)
    assert pos.max_event_ms is None and pos.now_ms == 0
    assert pos.advance("web/0", 1_000)
    assert pos.max_event_ms == 1_000 and pos.now_ms == 900
    # A second partition, ahead: the lowest (web/0) still holds the watermark back.
    assert not pos.advance("web/1", 5_000)
    assert pos.max_event_ms == 1_000
    assert pos.advance("web/0", 3_000)  # now the lowest is 3 000
    assert pos.max_event_ms == 3_000
    assert pos.advance("web/0", 9_000)  # web/1 is the lowest now: 5 000
    assert pos.max_event_ms == 5_000
    # A partition going back in time (a late record) moves nothing.
    assert not pos.advance("web/1", 4_000)
    assert not pos.advance("web/1", 5_000)
    assert not pos.advance("web/1", None)
    assert pos.max_event_ms == 5_000


def test_a_late_new_partition_never_moves_the_watermark_back() -> None:
    pos = positions()
    assert pos.advance("web/0", 5_000)
    assert not pos.advance("crm/0", 1_000)  # lowest is now 1 000, below the watermark
    assert pos.max_event_ms == 5_000


def test_live_records_never_move_the_watermark_only_the_wall_clock_does() -> None:
    pos = positions(live=True, lateness_ms=1_000)
    assert not pos.advance("web/0", 50_000)
    assert pos.max_event_ms is None
    assert pos.move_to(10_000)
    assert pos.now_ms == 9_000
    assert not pos.advance("web/0", 60_000)  # a record far ahead drags nobody's time
    assert pos.max_event_ms == 10_000
    # The partitions' event times are still kept: end of input jumps to the last one.
    assert pos.to_last_event() == 60_000 and pos.max_event_ms == 60_000


def test_move_to_only_moves_forward() -> None:
    pos = positions()
    assert pos.move_to(2_000)
    assert not pos.move_to(2_000)
    assert not pos.move_to(1_000)
    assert pos.max_event_ms == 2_000
    assert pos.move_to(2_001) and pos.max_event_ms == 2_001


def test_to_last_event_jumps_to_the_latest_partition_but_never_back() -> None:
    pos = positions()
    assert pos.to_last_event() is None and pos.max_event_ms is None  # no event at all
    pos.advance("web/0", 1_000)
    pos.advance("web/1", 7_000)
    assert pos.max_event_ms == 1_000
    assert pos.to_last_event() == 7_000 and pos.max_event_ms == 7_000
    pos.move_to(20_000)
    assert pos.to_last_event() == 7_000 and pos.max_event_ms == 20_000


def test_event_time_waits_for_a_record_read_earlier_and_not_yet_applied() -> None:
    feed = Feed(settings())
    pos = positions()
    first = feed("web", ev("e1", "view", 1_000, "d1"), seq=1)
    second = feed("web", ev("e2", "view", 5_000, "d1"), seq=2)
    third = feed("web", ev("e3", "view", 3_000, "d1"), seq=3)
    # Read 1, 2, 3; another worker applies 2 first: its time must not count while 1 waits.
    assert pos.observe(second) == ("web/0", None, None)
    # 1 is applied: evaluated at its own time, and the prefix 1..2 is now applied.
    assert pos.observe(first) == ("web/0", 1_000, 5_000)
    # 3 is earlier than 2: the partition's event time does not go back.
    assert pos.observe(third) == ("web/0", 5_000, 5_000)


def test_records_without_a_read_order_count_at_their_own_time() -> None:
    feed = Feed(settings())
    pos = positions()
    rec = feed("web", ev("e1", "view", 4_000, "d1"), partition=3)
    assert pos.observe(rec) == ("web/3", 4_000, 4_000)
    profile_row = feed("crm", {"email": "a@x.com"})
    assert pos.observe(profile_row) == ("crm/0", None, None)


def test_read_keeps_the_highest_offset_per_partition() -> None:
    pos = positions()
    pos.read("web/0", 7)
    pos.read("web/0", 3)
    pos.read("web/1", 1)
    assert pos.offsets == {"web/0": 7, "web/1": 1}


def test_save_and_reload_give_the_same_watermark_and_partitions() -> None:
    store = MemoryStore()
    pos = positions(store)
    pos.advance("web/0", 4_000)
    pos.advance("web/1", 6_000)
    txn = Txn(store)
    pos.save(txn)
    txn.commit()
    assert store.get(WATERMARK_KEY) == b"4000"
    again = positions(store, lateness_ms=500)
    assert again.max_event_ms == 4_000 and again.now_ms == 3_500
    assert not again.advance("web/1", 6_000)  # the partitions' times came back too
    assert again.advance("web/0", 8_000) and again.max_event_ms == 6_000
    assert again.to_last_event() == 8_000


def test_the_identity_step_keeps_its_own_watermark() -> None:
    store = MemoryStore()
    graph = positions(store, graph=True)
    graph.advance("web/0", 9_000)
    txn = Txn(store)
    graph.save(txn)
    txn.commit()
    assert store.get(GRAPH_WATERMARK_KEY) == b"9000" and store.get(GRAPH_PARTITIONS_KEY)
    assert store.get(WATERMARK_KEY) is None and store.get(PARTITIONS_KEY) is None
    assert positions(store).max_event_ms is None
    assert positions(store, graph=True).max_event_ms == 9_000


def test_save_before_any_event_writes_nothing() -> None:
    store = MemoryStore()
    txn = Txn(store)
    positions(store).save(txn)
    assert txn.changes() == {}


def test_a_profile_sources_stored_event_time_no_longer_holds_the_watermark() -> None:
    """Profile records moved event time in earlier versions; their partitions never advance
    now, so a state that kept one would hold the replay's watermark back for good."""
    store = MemoryStore()
    store.write({PARTITIONS_KEY: b'{"crm/0": 500, "web/0": 1000}', WATERMARK_KEY: b"500"})
    pos = Positions(
        store, graph=False, live=False, lateness_ms=0, profile_sources=frozenset({"crm"})
    )
    assert pos.advance("web/0", 2_000)
    assert pos.max_event_ms == 2_000
    held = positions(store)  # without knowing crm is a profile source: held back
    assert not held.advance("web/0", 2_000) and held.max_event_ms == 500


def test_a_replay_waits_for_every_partition_expected_to_deliver() -> None:
    """The first partition read does not drag event time to its end while another, not yet
    read, still has records of earlier times (a Kafka replay on one worker reads one
    partition's first batch before the other's)."""
    pos = Positions(
        MemoryStore(),
        graph=False,
        live=False,
        lateness_ms=0,
        expected=frozenset({"web/0", "web/1"}),
    )
    assert not pos.advance("web/0", 9_000)  # web/1 has delivered nothing yet
    assert pos.max_event_ms is None
    assert pos.advance("web/1", 1_000)  # the lowest of both
    assert pos.max_event_ms == 1_000
    assert pos.advance("web/1", 5_000) and pos.max_event_ms == 5_000
    # A restarted replay knows its partitions from the state: nothing to wait for.
    store = MemoryStore()
    txn = Txn(store)
    pos.save(txn)
    txn.commit()
    again = Positions(
        store, graph=False, live=False, lateness_ms=0, expected=frozenset({"web/0", "web/1"})
    )
    assert again.max_event_ms == 5_000
    assert again.advance("web/1", 6_000) and again.max_event_ms == 6_000
    # The end of input releases a partition that never delivered (all its records junk).
    held = Positions(
        MemoryStore(), graph=False, live=False, lateness_ms=0, expected=frozenset({"web/0", "x/0"})
    )
    assert not held.advance("web/0", 7_000)
    assert held.to_last_event() == 7_000 and held.max_event_ms == 7_000
