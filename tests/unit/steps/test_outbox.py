"""operators.steps.outbox alone: numbered outputs kept until a snapshot covers them."""

from __future__ import annotations

from operators.steps.call import Output
from operators.steps.outbox import Outbox, outbox_key, seq_key
from operators.store import MemoryStore, Txn
from schemas.records import AudienceChange, JourneySend, Move


def change(n: int, identities: dict[str, list[str]] | None = None) -> AudienceChange:
    return AudienceChange(
        id=f"c{n}",
        segment_id="buyers",
        status="entered",
        profile_id=f"p_{n}",
        identities=identities or {"ECID": [f"dev{n}"]},
        event_time_ms=n,
        emitted_at_ms=0,
        reason=f"event:e{n}",
        sequence=1,
    )


def append(store: MemoryStore, outbox: Outbox, key: int, out: list[Output]) -> None:
    txn = Txn(store)
    outbox.append(txn, key, out)
    txn.commit()


def ids(out: list[Output]) -> list[str]:
    return [o.id if isinstance(o, AudienceChange) else type(o).__name__ for o in out]


def test_outputs_are_numbered_per_key_and_read_back_as_written() -> None:
    store = MemoryStore()
    outbox = Outbox(store)
    assert outbox.seq(3) == 0
    append(store, outbox, 3, [change(1), change(2)])
    append(store, outbox, 4, [change(9)])
    assert outbox.seq(3) == 2 and outbox.seq(4) == 1
    assert store.get(seq_key(3)) == b"2"
    assert store.get(outbox_key(3, 2)) is not None and store.get(outbox_key(3, 3)) is None
    assert outbox.after(3, 0) == [change(1), change(2)]
    assert outbox.after(4, 0) == [change(9)]


def test_sequences_continue_across_a_new_outbox_over_the_same_store() -> None:
    store = MemoryStore()
    append(store, Outbox(store), 0, [change(1), change(2)])
    restarted = Outbox(store)
    assert restarted.seq(0) == 2
    append(store, restarted, 0, [change(3)])
    assert store.get(outbox_key(0, 3)) is not None
    assert ids(restarted.after(0, 0)) == ["c1", "c2", "c3"]


def test_next_seq_counts_outputs_made_earlier_in_the_call() -> None:
    store = MemoryStore()
    outbox = Outbox(store)
    append(store, outbox, 0, [change(1)])
    assert outbox.next_seq(0, []) == 2
    assert outbox.next_seq(0, [change(2), change(3)]) == 4


def test_after_gives_what_follows_a_snapshot() -> None:
    store = MemoryStore()
    outbox = Outbox(store)
    append(store, outbox, 0, [change(n) for n in range(1, 6)])
    assert ids(outbox.after(0, 3)) == ["c4", "c5"]
    assert outbox.after(0, 5) == []


def test_prune_keeps_the_outputs_after_the_snapshot() -> None:
    store = MemoryStore()
    outbox = Outbox(store)
    append(store, outbox, 0, [change(n) for n in range(1, 6)])
    append(store, outbox, 1, [change(7)])
    outbox.prune(0, 3)
    assert ids(outbox.after(0, 0)) == ["c4", "c5"]
    assert ids(outbox.after(1, 0)) == ["c7"]  # another key's outputs stay
    assert outbox.seq(0) == 5 and store.get(seq_key(0)) == b"5"  # the counter survives
    assert Outbox(store).seq(0) == 5
    outbox.prune(0, 0)  # no snapshot yet: nothing to prune
    assert ids(outbox.after(0, 0)) == ["c4", "c5"]


def test_without_keep_nothing_is_kept_but_sequences_advance() -> None:
    store = MemoryStore()
    outbox = Outbox(store, keep=False)
    append(store, outbox, 0, [change(1), change(2)])
    assert outbox.seq(0) == 2 and store.get(seq_key(0)) == b"2"
    assert outbox.after(0, 0) == []
    assert [k for k, _ in store.scan(b"q/")] == [seq_key(0)]


def test_an_empty_call_writes_nothing() -> None:
    store = MemoryStore()
    txn = Txn(store)
    Outbox(store).append(txn, 0, [])
    assert txn.changes() == {}


def test_drop_person_removes_only_changes_naming_the_person() -> None:
    store = MemoryStore()
    outbox = Outbox(store)
    person = {"Email": ["a@x.com"], "ECID": ["d1", "d2"]}
    move = Move(1, ("ECID", "d2"), ("Email", "a@x.com"), (("ECID", "d2"),), "m1", 0, None)
    append(store, outbox, 0, [change(1, person), change(2), move])
    append(store, outbox, 5, [change(3, {"ECID": ["d2"]}), change(4, {"ECID": ["d22"]})])
    txn = Txn(store)
    outbox.drop_person(txn, [("ECID", "d2")])
    txn.commit()
    # Commands between the steps are not outputs to a destination: they stay.
    assert ids(outbox.after(0, 0)) == ["c2", "Move"]
    assert ids(outbox.after(5, 0)) == ["c4"]  # every key; d22 is someone else
    assert outbox.seq(0) == 3 and Outbox(store).seq(5) == 2


def test_drop_person_removes_their_journey_sends_too() -> None:
    store = MemoryStore()
    outbox = Outbox(store)

    def send(n: int, ecid: str) -> JourneySend:
        return JourneySend(
            f"s{n}", "cart", "v1", f"i{n}", "1", "cart-1", "email", f"p_{n}", {"ECID": [ecid]}, n, 0
        )

    append(store, outbox, 0, [send(1, "d2"), send(2, "d3"), change(3, {"ECID": ["d2"]})])
    txn = Txn(store)
    outbox.drop_person(txn, [("ECID", "d2")])
    txn.commit()
    assert [o.id for o in outbox.after(0, 0) if isinstance(o, JourneySend)] == ["s2"]
    assert len(outbox.after(0, 0)) == 1
