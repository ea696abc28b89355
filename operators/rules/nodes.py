"""The rule AST and its canonical text.

The lark tree is turned into these small frozen nodes (``parse.py``) so that the checker and
the compiler match on Python types, not on grammar rule names. Every node keeps its span
(``start``/``end``, 0-based offsets in the rule text): errors point at a column, and ``explain``
shows each sub-expression as the user wrote it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class Path:
    root: str
    parts: tuple[str, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any  # None, bool, int, float, str, or a list of those (a list literal)
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Kwarg:
    name: str
    value: Expr
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr | Kwarg, ...]  # in source order
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Cmp:
    op: str
    left: Value
    right: Value
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Bare:
    value: Value
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Not:
    item: Expr
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Junction:
    op: Literal["and", "or"]
    items: tuple[Expr, ...]
    start: int
    end: int


# What may stand on either side of a comparison, and what is true or false.
Value: TypeAlias = "Path | Lit | Name | Call"
Expr: TypeAlias = "Cmp | Bare | Not | Junction"


# -- canonical text: one spelling per meaning (spacing, quotes and redundant parentheses
# dropped). An aggregate's or absent's canonical text names its state in every stored profile
# (``call_key``), so two spellings of one call share state, and changing the rendering would
# orphan the state already stored under the old keys.


def _render_literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_render_literal(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def render_value(node: Value) -> str:
    if isinstance(node, Path):
        return ".".join((node.root, *node.parts))
    if isinstance(node, Lit):
        return _render_literal(node.value)
    if isinstance(node, Name):
        return node.name
    args: list[str] = []
    for arg in node.args:
        if isinstance(arg, Kwarg):
            args.append(f"{arg.name}={render(arg.value)}")
        else:
            args.append(render(arg))
    return f"{node.name}({', '.join(args)})"


def render(node: Expr) -> str:
    if isinstance(node, Junction):
        parts = []
        for item in node.items:
            text = render(item)
            parts.append(f"({text})" if isinstance(item, Junction) else text)
        return f" {node.op} ".join(parts)
    if isinstance(node, Not):
        text = render(node.item)
        return f"not ({text})" if isinstance(node.item, Junction) else f"not {text}"
    if isinstance(node, Cmp):
        return f"{render_value(node.left)} {node.op} {render_value(node.right)}"
    return render_value(node.value)


def canonical_call(name: str, positional: list[str], kwargs: dict[str, str]) -> str:
    parts = [*positional, *(f"{k}={kwargs[k]}" for k in ("after", "within") if k in kwargs)]
    return f"{name}({', '.join(parts)})"


def call_key(func: str, canonical: str) -> str:
    return f"{func}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"
