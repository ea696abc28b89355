"""Small generated record streams for the property tests: events `(type, ts, amount, page)`
and tier changes `(level, ts, priority)`, and the records they make."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from schemas.records import Origin, Record


def events(*types: str) -> st.SearchStrategy[tuple[str, int, int, str]]:
    return st.tuples(
        st.sampled_from(types),
        st.integers(0, 40),  # ts
        st.integers(0, 30),  # amount
        st.sampled_from(["a", "b"]),
    )


attribute = st.tuples(st.sampled_from(["gold", "silver"]), st.integers(0, 40), st.integers(0, 3))


def record(i: int, item: tuple[Any, ...]) -> Record:
    """An event from `web` or a profile record from `crm`, at offset `i`."""
    if len(item) == 4:
        kind, ts, amount, page = item
        body = {"eventType": kind, "amount": amount, "page": page}
        return Record(Origin("web", 0, i), 0, "event", 0, (), body, ts, f"e{i}", kind)
    level, ts, priority = item
    return Record(Origin("crm", 0, i), 1, "profile", priority, (), {"level": level}, ts, None, None)
