"""What compiling a rule produces, and what it reads: the types the engine and profiles use.

``Aggregate`` and ``Absent`` are the event-level state a rule needs (maintained per profile by
``operators.profile`` under their ``key``); ``EvalContext`` is the profile at one ``now`` that
``CompiledRule.evaluate`` reads; ``explain`` replays the kept tree of ``Check`` nodes to say why
a profile is or is not in a segment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from operators.rules.paths import Getter, Predicate


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate call (exists/count/sum/min/max/last) over a profile's events."""

    key: str
    func: Literal["exists", "count", "sum", "min", "max", "last"]
    matches: Callable[[Mapping[str, Any]], bool]
    values: Callable[[Mapping[str, Any]], list[Any]] | None
    within_ms: int | None
    event_types: frozenset[str] | None
    fields: frozenset[str]
    text: str = ""  # the canonical text the key is derived from (for logs and debugging)


@dataclass(frozen=True, slots=True)
class Absent:
    """``absent(B, after=A, within=D)``: ``after`` is A, ``missing`` is B."""

    key: str
    after: Callable[[Mapping[str, Any]], bool]
    missing: Callable[[Mapping[str, Any]], bool]
    within_ms: int
    event_types: frozenset[str] | None
    fields: frozenset[str]
    text: str = ""


class EvalContext(Protocol):
    """What a rule reads: one profile at one ``now`` (supplied by the engine)."""

    now_ms: int

    def profile_values(self, path: str) -> list[Any]: ...

    def aggregate(self, agg: Aggregate) -> Any: ...

    def absent(self, a: Absent) -> bool: ...

    def in_segment(self, segment_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ExplainLine:
    depth: int
    text: str
    value: Any
    detail: str


@dataclass(frozen=True, slots=True)
class Check:
    """A compiled boolean sub-expression, kept for ``explain``."""

    text: str
    fn: Predicate
    kind: Literal["and", "or", "not", "cmp", "bare"]
    children: tuple[Check, ...] = ()
    op: str = ""
    left: Getter | None = None
    right: Getter | None = None
    right_is_list: bool = False


@dataclass(frozen=True, slots=True)
class CompiledRule:
    segment_id: str
    text: str
    aggregates: tuple[Aggregate, ...]
    absents: tuple[Absent, ...]
    profile_paths: frozenset[str]
    segment_refs: frozenset[str]
    evaluate: Callable[[EvalContext], bool]
    _root: Check | None = field(default=None, repr=False, compare=False)

    def explain(self, ctx: EvalContext) -> list[ExplainLine]:
        """One line per boolean sub-expression, pre-order, with its value at ``ctx``."""
        lines: list[ExplainLine | None] = []

        def walk(node: Check, depth: int) -> bool:
            at = len(lines)
            lines.append(None)
            child_values = [walk(child, depth + 1) for child in node.children]
            value = bool(node.fn(ctx))
            lines[at] = ExplainLine(depth, node.text, value, _detail(node, ctx, child_values))
            return value

        if self._root is not None:
            walk(self._root, 0)
        return cast(list[ExplainLine], lines)


def _show_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _show(values: list[Any], as_list: bool = False) -> str:
    if as_list or len(values) > 1:
        return "[" + ", ".join(_show_value(v) for v in values) + "]"
    return _show_value(values[0]) if values else "null"


def _detail(node: Check, ctx: Any, child_values: list[bool]) -> str:
    if node.kind in ("and", "or"):
        return f" {node.kind} ".join(_show_value(v) for v in child_values)
    if node.kind == "not":
        return f"not {_show_value(child_values[0])}"
    if node.kind == "bare":
        return _show(node.left(ctx)) if node.left is not None else ""
    left = _show(node.left(ctx)) if node.left is not None else "null"
    right = _show(node.right(ctx), node.right_is_list) if node.right is not None else "null"
    return f"{left} {node.op} {right}"
