"""``<aggregate call> <op> <literal>`` (compiled to one fused closure, without the list of
values the generic comparison goes through) follows DESIGN §5's comparison semantics, written
here independently: a call without a value compares false, values of different kinds never
compare, ``int`` and ``float`` are both numbers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from operators.aggregates import agg_add, agg_init, agg_value
from operators.rules import Absent, Aggregate, RuleErrors, compile_rules

OPS = ("==", "!=", "<", "<=", ">", ">=", "contains", "startswith")
literals = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.0, 2.0, 1e18]),
    st.sampled_from(["a", "ab", "b", ""]),
    st.booleans(),
)
scalars = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 2.0, -0.0]),
    st.sampled_from(["a", "ab", "b", "", "ba"]),
    st.booleans(),
)
calls = st.sampled_from(
    [
        "exists(event.k == 1)",
        "count(event.k == 1)",
        'count(event.k == 1, within="5ms")',
        "sum(event.v, event.k == 1)",
        'sum(event.v, event.k == 1, within="5ms")',
        "min(event.v, event.k == 1)",
        'max(event.v, event.k == 1, within="5ms")',
        "last(event.v, event.k == 1)",
        'last(event.v, event.k == 1, within="5ms")',
    ]
)
events_st = st.lists(st.tuples(st.integers(0, 10), scalars), max_size=6)


def kind(x: Any) -> str:
    if isinstance(x, bool):
        return "b"
    if isinstance(x, int | float):
        return "n"
    return "s" if isinstance(x, str) else "o"


def reference(value: Any, op: str, const: Any) -> bool:
    if value is None:
        return False
    same_kind = kind(value) == kind(const)
    if op == "==":
        return same_kind and value == const
    if op == "!=":
        return same_kind and value != const
    if op == "contains":
        if isinstance(value, str) and isinstance(const, str):
            return const in value
        return same_kind and value == const
    if op == "startswith":
        return isinstance(value, str) and isinstance(const, str) and value.startswith(const)
    if not same_kind or kind(value) not in ("n", "s"):
        return False
    return bool(
        {"<": value < const, "<=": value <= const, ">": value > const, ">=": value >= const}[op]
    )


class Ctx:
    def __init__(self, events: Sequence[tuple[int, Any]], now_ms: int) -> None:
        self.events = [(ts, {"k": 1, "v": v}) for ts, v in events]
        self.now_ms = now_ms

    def profile_values(self, path: str) -> list[Any]:
        return []

    def aggregate(self, agg: Aggregate) -> Any:
        state = agg_init(agg)
        for ts, e in self.events:
            if agg.matches(e):
                state = agg_add(state, agg, ts, e)
        return agg_value(state, agg, self.now_ms)

    def absent(self, a: Absent) -> bool:
        raise AssertionError("no absent() here")

    def in_segment(self, segment_id: str) -> bool:
        raise AssertionError("no in_segment() here")


@given(calls, st.sampled_from(OPS), literals, events_st, st.integers(0, 12))
def test_aggregate_against_a_literal(
    call: str, op: str, const: Any, events: list[tuple[int, Any]], now: int
) -> None:
    text = f"{call} {op} {json.dumps(const)}"
    try:
        (rule,) = compile_rules([("s", text)])
    except RuleErrors:
        assume(False)
        return
    ctx = Ctx(events, now)
    value = ctx.aggregate(rule.aggregates[0])
    assert rule.evaluate(ctx) is reference(value, op, const), (text, value)
