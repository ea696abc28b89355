"""`Txn.scan` sees the transaction's own writes and deletes, in key order, whatever the mix of
puts, deletes and scans (its index of pending keys is built on the first scan and merged in
as writes come)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.store import MemoryStore, Txn

KEYS = st.builds(
    lambda a, b: f"h/{a}/{b}".encode(),
    st.sampled_from(["0001", "0002", "0010"]),
    st.integers(0, 30),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.binary(min_size=1, max_size=3)),
        st.tuples(st.just("json"), KEYS, st.integers(0, 9)),
        st.tuples(st.just("delete"), KEYS, st.none()),
        st.tuples(
            st.just("scan"), st.sampled_from([b"h/", b"h/0001/", b"h/0002/1", b"x"]), st.none()
        ),
        st.tuples(st.just("commit"), st.none(), st.none()),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, st.binary(min_size=1, max_size=3), max_size=20), OPS)
def test_scan_equals_a_plain_model(
    initial: dict[bytes, bytes], ops: list[tuple[str, object, object]]
) -> None:
    store = MemoryStore()
    store.write(dict(initial))
    model = {k: v for k, v in store.scan(b"")}
    txn = Txn(store)
    for op, key, value in ops:
        if op == "put":
            assert isinstance(key, bytes) and isinstance(value, bytes)
            txn.put(key, value)
            model[key] = value
        elif op == "json":
            assert isinstance(key, bytes)
            txn.put_json(key, value)
            model[key] = str(value).encode()
        elif op == "delete":
            assert isinstance(key, bytes)
            txn.delete(key)
            model.pop(key, None)
        elif op == "scan":
            assert isinstance(key, bytes)
            want = sorted((k, v) for k, v in model.items() if k.startswith(key))
            assert list(txn.scan(key)) == want
        else:
            txn.commit()
            assert dict(store.scan(b"h/")) == {
                k: v for k, v in model.items() if k.startswith(b"h/")
            }
