"""The segment rule language (DESIGN §5): parsed once with lark, checked, compiled to closures.

Nothing here evaluates text as Python: the lark tree becomes a small AST, the AST is checked
(every error gets the segment id and a column) and turned into nested closures.

Semantics, where DESIGN §5 leaves a choice:

* Paths: ``profile.a.b`` / ``event.a.b``. Each step looks a key up in every object reached so
  far; a list met on the way (or at the leaf) is flattened, recursively, so a path yields a flat
  list of values. JSON ``null`` is the same as missing: it yields nothing. There is no indexing
  (``items.0`` looks up the key ``"0"``).
* A comparison is true when ANY left value and ANY right value pass. A side with no value
  (missing, null) makes every comparison false, ``!=`` included. Values of different kinds
  (string, number, bool, other) never compare: ``1 == true``, ``"1" == 1`` and ``"a" < 1`` are
  false, never an exception. ``int`` and ``float`` are both numbers (``1 == 1.0``).
* ``X == null`` is true when X yields no value (missing or null); ``X != null`` is its negation.
  ``null`` with any other operator is a compile error.
* ``in``: the right side is a list literal or a path; true when a left value equals one of the
  right values. ``contains``: a left value equals the right value, or both are strings and the
  right is a substring of the left (paths are flattened, so a list-valued path contains its
  elements). ``startswith``: strings only.
* ``iequals``, ``icontains``, ``istartswith``: ``==``, ``contains`` and ``startswith`` on strings
  compared without regard to case (Unicode case folding); strings only on both sides. Exact
  matching stays the default (``eventType`` values are case-sensitive by design).
* ``last`` skips matching events without a value at its path: it is the last known value.
* Column numbers are 1-based character offsets in the rule text (the column for a one-line rule).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

__all__ = [
    "Absent",
    "Aggregate",
    "CompiledRule",
    "EvalContext",
    "ExplainLine",
    "RuleError",
    "RuleErrors",
    "compile_rules",
    "event_values",
    "parse_duration",
]

# ---------------------------------------------------------------------------------- errors


class RuleError(ValueError):
    """One problem in one rule, located by a 1-based column in the rule text."""

    def __init__(self, segment_id: str, column: int, message: str) -> None:
        super().__init__(f"segment {segment_id!r}, column {column}: {message}")
        self.segment_id = segment_id
        self.column = column
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.segment_id, self.column, self.message))


class RuleErrors(ValueError):
    """Every problem found in a set of rules (all segments are checked before raising)."""

    def __init__(self, errors: Iterable[RuleError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors,))


# ------------------------------------------------------------------------------- durations

_UNIT_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_UNIT_ORDER = ("w", "d", "h", "m", "s", "ms")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> int:
    """``"30m"``, ``"1h"``, ``"7d"``, ``"1h30m"`` → milliseconds (units ms s m h d w, largest
    first, each at most once, no spaces). ValueError when malformed or not positive."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"bad duration {text!r}: expected e.g. '30m', '1h', '7d'")
    pos, total, rank = 0, 0, -1
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(
                f"bad duration {text!r}: expected a number and a unit (ms s m h d w), e.g. '7d'"
            )
        unit_rank = _UNIT_ORDER.index(m.group(2))
        if unit_rank <= rank:
            raise ValueError(f"bad duration {text!r}: units go from largest to smallest, once each")
        rank = unit_rank
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if total <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than zero")
    return total


def _format_duration(ms: int) -> str:
    """The canonical spelling: ``"24h"`` and ``"1d"`` both become ``"1d"``."""
    for unit in _UNIT_ORDER:
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"  # pragma: no cover - "ms" always divides


# ----------------------------------------------------------------------------------- paths


def _flatten_into(out: list[Any], items: Iterable[Any]) -> None:
    for item in items:
        if item is None:
            continue
        kind = type(item)
        if kind is list or kind is tuple or isinstance(item, (list, tuple)):
            _flatten_into(out, item)
        else:
            out.append(item)


def _walk(obj: Any, parts: tuple[str, ...]) -> list[Any]:
    current: list[Any] = [obj]
    for part in parts:
        found: list[Any] = []
        for item in current:
            if type(item) is dict or isinstance(item, Mapping):
                value = item.get(part)
                if value is None:
                    continue
                kind = type(value)
                if kind is list or kind is tuple or isinstance(value, (list, tuple)):
                    _flatten_into(found, value)
                else:
                    found.append(value)
        if not found:
            return found
        current = found
    return current


@functools.lru_cache(maxsize=4096)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def event_values(event: Mapping[str, Any], path: str) -> list[Any]:
    """The values of ``event.<path>`` (``path`` without ``event.``): flattened through lists,
    nulls dropped, ``[]`` when missing."""
    return _walk(event, _split(path))


Getter: TypeAlias = Callable[[Any], list[Any]]
Predicate: TypeAlias = Callable[[Any], bool]


def _event_getter(parts: tuple[str, ...]) -> Getter:
    if len(parts) == 1:
        key = parts[0]

        def get_one(event: Any) -> list[Any]:
            value = event.get(key)
            if value is None:
                return []
            kind = type(value)
            if kind is str or kind is int or kind is float:
                return [value]
            if isinstance(value, (list, tuple)):
                out: list[Any] = []
                _flatten_into(out, value)
                return out
            return [value]

        return get_one
    return lambda event: _walk(event, parts)


_MAX_INT = 2**63  # orjson stores 64-bit integers only
_MAX_FLOAT = 1e300  # keeps exact float sums away from overflow


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return bool(-_MAX_INT <= value < _MAX_INT)
    if kind is float:
        return math.isfinite(value) and abs(value) < _MAX_FLOAT
    return False


# ------------------------------------------------------------------------- public types


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
class _Check:
    """A compiled boolean sub-expression, kept for ``explain``."""

    text: str
    fn: Predicate
    kind: Literal["and", "or", "not", "cmp", "bare"]
    children: tuple[_Check, ...] = ()
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
    _root: _Check | None = field(default=None, repr=False, compare=False)

    def explain(self, ctx: EvalContext) -> list[ExplainLine]:
        """One line per boolean sub-expression, pre-order, with its value at ``ctx``."""
        lines: list[ExplainLine | None] = []

        def walk(node: _Check, depth: int) -> bool:
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


def _detail(node: _Check, ctx: Any, child_values: list[bool]) -> str:
    if node.kind in ("and", "or"):
        return f" {node.kind} ".join(_show_value(v) for v in child_values)
    if node.kind == "not":
        return f"not {_show_value(child_values[0])}"
    if node.kind == "bare":
        return _show(node.left(ctx)) if node.left is not None else ""
    left = _show(node.left(ctx)) if node.left is not None else "null"
    right = _show(node.right(ctx), node.right_is_list) if node.right is not None else "null"
    return f"{left} {node.op} {right}"


# ------------------------------------------------------------------------------ grammar

_GRAMMAR = r"""
?start: rule
?rule: or_expr
?or_expr: and_expr ("or" and_expr)*
?and_expr: not_expr ("and" not_expr)*
?not_expr: "not" not_expr -> neg
         | atom
?atom: "(" rule ")"
     | cmp
     | bare
cmp: value op value
bare: value
!op: "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "contains" | "startswith"
   | "iequals" | "icontains" | "istartswith"
?value: path | name | literal | call
path: PATH
name: NAME
call: NAME "(" [arg ("," arg)*] ")"
?arg: rule | kwarg
kwarg: NAME "=" rule
?literal: string | number | const | list
string: STRING
number: NUMBER
!const: "true" | "false" | "null"
list: "[" [literal ("," literal)*] "]"
STRING: /"(?:[^"\\\n]|\\.)*"/ | /'(?:[^'\\\n]|\\.)*'/
NUMBER: /-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?/
PATH.2: /[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
%ignore /\s+/
"""

_TERMINAL_NAMES = {
    "STRING": "a string",
    "NUMBER": "a number",
    "PATH": "a path",
    "NAME": "a name",
    "$END": "the end of the rule",
}


@functools.cache
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=True)


# ---------------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class _Path:
    root: str
    parts: tuple[str, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Lit:
    value: Any  # None, bool, int, float, str, or a list of those (a list literal)
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Name:
    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Kwarg:
    name: str
    value: _Expr
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    args: tuple[_Expr | _Kwarg, ...]  # in source order
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Cmp:
    op: str
    left: _Value
    right: _Value
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Bare:
    value: _Value
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Not:
    item: _Expr
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Junction:
    op: Literal["and", "or"]
    items: tuple[_Expr, ...]
    start: int
    end: int


_Value: TypeAlias = "_Path | _Lit | _Name | _Call"
_Expr: TypeAlias = "_Cmp | _Bare | _Not | _Junction"


class _SyntaxProblem(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\"}


def _unquote(token: Token) -> str:
    raw = str(token)[1:-1]
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]  # the lexer guarantees a character after a backslash
        if nxt in ("'", '"'):
            out.append(nxt)
            i += 2
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", raw[i + 2 : i + 6]):
            out.append(chr(int(raw[i + 2 : i + 6], 16)))
            i += 6
        else:
            pos = (token.start_pos or 0) + 1 + i
            raise _SyntaxProblem(pos, f"bad escape '\\{nxt}' in a string")
    return "".join(out)


def _span(tree: Tree[Token]) -> tuple[int, int]:
    return tree.meta.start_pos, tree.meta.end_pos


def _to_literal(node: Tree[Token]) -> _Lit:
    start, end = _span(node)
    if node.data == "string":
        return _Lit(_unquote(cast(Token, node.children[0])), start, end)
    if node.data == "number":
        raw = str(node.children[0])
        if any(c in raw for c in ".eE"):
            value = float(raw)
            if not math.isfinite(value):
                raise _SyntaxProblem(start, f"number {raw} is out of range")
            return _Lit(value, start, end)
        return _Lit(int(raw), start, end)
    if node.data == "const":
        return _Lit({"true": True, "false": False, "null": None}[str(node.children[0])], start, end)
    items = [_to_literal(cast(Tree[Token], c)) for c in node.children if c is not None]
    for item in items:
        if isinstance(item.value, list):
            raise _SyntaxProblem(item.start, "lists inside lists are not supported")
    return _Lit([item.value for item in items], start, end)


def _to_value(node: Tree[Token]) -> _Value:
    start, end = _span(node)
    if node.data == "path":
        root, *parts = str(node.children[0]).split(".")
        return _Path(root, tuple(parts), start, end)
    if node.data == "name":
        return _Name(str(node.children[0]), start, end)
    if node.data == "call":
        name = cast(Token, node.children[0])
        args: list[_Expr | _Kwarg] = []
        for child in node.children[1:]:
            if child is None:
                continue
            tree = cast(Tree[Token], child)
            if tree.data == "kwarg":
                kstart, kend = _span(tree)
                args.append(
                    _Kwarg(
                        str(tree.children[0]),
                        _to_expr(cast(Tree[Token], tree.children[1])),
                        kstart,
                        kend,
                    )
                )
            else:
                args.append(_to_expr(tree))
        return _Call(str(name), tuple(args), start, end)
    return _to_literal(node)


def _to_expr(node: Tree[Token]) -> _Expr:
    start, end = _span(node)
    kids = [cast(Tree[Token], c) for c in node.children]
    if node.data in ("or_expr", "and_expr"):
        op: Literal["and", "or"] = "or" if node.data == "or_expr" else "and"
        items: list[_Expr] = []
        for kid in kids:
            expr = _to_expr(kid)
            if isinstance(expr, _Junction) and expr.op == op:
                items.extend(expr.items)
            else:
                items.append(expr)
        return _Junction(op, tuple(items), start, end)
    if node.data == "neg":
        return _Not(_to_expr(kids[0]), start, end)
    if node.data == "cmp":
        return _Cmp(str(kids[1].children[0]), _to_value(kids[0]), _to_value(kids[2]), start, end)
    if node.data == "bare":
        return _Bare(_to_value(kids[0]), start, end)
    raise AssertionError(f"unexpected rule node {node.data}")  # pragma: no cover


def _expected(names: Iterable[str]) -> str:
    shown: set[str] = set()
    terminals = {t.name: t for t in _parser().terminals}
    for name in names:
        if name in _TERMINAL_NAMES:
            shown.add(_TERMINAL_NAMES[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            shown.add(repr(terminals[name].pattern.value))
    return ", ".join(sorted(shown))


def _parse(text: str) -> _Expr:
    if not isinstance(text, str):
        raise _SyntaxProblem(0, f"a rule is a string, not {type(text).__name__}")
    if not text.strip():
        raise _SyntaxProblem(0, "empty rule")
    try:
        tree = _parser().parse(text)
    except UnexpectedToken as e:
        if e.token.type == "$END":
            raise _SyntaxProblem(
                len(text), f"unexpected end of rule; expected {_expected(e.expected)}"
            ) from None
        raise _SyntaxProblem(
            e.token.start_pos or 0,
            f"unexpected {str(e.token)!r}; expected {_expected(e.expected)}",
        ) from None
    except UnexpectedCharacters as e:
        pos = e.pos_in_stream or 0
        rest = text[pos:]
        what = "an unterminated string" if rest[:1] in ("'", '"') else repr(rest[:1])
        raise _SyntaxProblem(pos, f"unexpected {what}") from None
    except UnexpectedInput as e:  # pragma: no cover - the LALR parser raises the two above
        raise _SyntaxProblem(max(getattr(e, "pos_in_stream", 0) or 0, 0), "syntax error") from None
    if isinstance(tree, Token):  # pragma: no cover - the grammar always yields a tree
        raise _SyntaxProblem(0, "syntax error")
    return _to_expr(tree)


# ---------------------------------------------------------------------- canonical text


def _render_literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_render_literal(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _render_value(node: _Value) -> str:
    if isinstance(node, _Path):
        return ".".join((node.root, *node.parts))
    if isinstance(node, _Lit):
        return _render_literal(node.value)
    if isinstance(node, _Name):
        return node.name
    args: list[str] = []
    for arg in node.args:
        if isinstance(arg, _Kwarg):
            args.append(f"{arg.name}={_render(arg.value)}")
        else:
            args.append(_render(arg))
    return f"{node.name}({', '.join(args)})"


def _render(node: _Expr) -> str:
    if isinstance(node, _Junction):
        parts = []
        for item in node.items:
            text = _render(item)
            parts.append(f"({text})" if isinstance(item, _Junction) else text)
        return f" {node.op} ".join(parts)
    if isinstance(node, _Not):
        text = _render(node.item)
        return f"not ({text})" if isinstance(node.item, _Junction) else f"not {text}"
    if isinstance(node, _Cmp):
        return f"{_render_value(node.left)} {node.op} {_render_value(node.right)}"
    return _render_value(node.value)


def _canonical_call(name: str, positional: list[str], kwargs: dict[str, str]) -> str:
    parts = [*positional, *(f"{k}={kwargs[k]}" for k in ("after", "within") if k in kwargs)]
    return f"{name}({', '.join(parts)})"


def _key(func: str, canonical: str) -> str:
    return f"{func}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


# ----------------------------------------------------------------- runtime comparisons


def _kind(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return "s"
    if kind is bool:
        return "b"
    if kind is int or kind is float:
        return "n"
    if isinstance(value, bool):
        return "b"
    if isinstance(value, (int, float)):
        return "n"
    if isinstance(value, str):
        return "s"
    return "o"


def _eq(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and bool(a == b)


def _ne(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and bool(a != b)


def _ordered(a: Any, b: Any) -> bool:
    kind = _kind(a)
    return kind in ("n", "s") and kind == _kind(b)


def _lt(a: Any, b: Any) -> bool:
    return _ordered(a, b) and bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _ordered(a, b) and bool(a <= b)


def _gt(a: Any, b: Any) -> bool:
    return _ordered(a, b) and bool(a > b)


def _ge(a: Any, b: Any) -> bool:
    return _ordered(a, b) and bool(a >= b)


def _contains(a: Any, b: Any) -> bool:
    if type(a) is str and type(b) is str:
        return b in a
    return _eq(a, b)


def _startswith(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a.startswith(b)


# The case-insensitive operators, on case-folded strings (the right side folded once when it
# is a literal).
_FOLDED: dict[str, Callable[[str, str], bool]] = {
    "iequals": operator.eq,
    "icontains": operator.contains,  # contains(a, b) is `b in a`
    "istartswith": str.startswith,
}


def _folded(test: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    def pair(a: Any, b: Any) -> bool:
        return type(a) is str and type(b) is str and test(a.casefold(), b.casefold())

    return pair


_PAIR: dict[str, Callable[[Any, Any], bool]] = {
    "==": _eq,
    "in": _eq,
    "!=": _ne,
    "<": _lt,
    "<=": _le,
    ">": _gt,
    ">=": _ge,
    "contains": _contains,
    "startswith": _startswith,
    **{op: _folded(test) for op, test in _FOLDED.items()},
}


def _any_pair(pair: Callable[[Any, Any], bool], lget: Getter, rget: Getter) -> Predicate:
    def test(x: Any) -> bool:
        lefts = lget(x)
        if not lefts:
            return False
        rights = rget(x)
        for left in lefts:
            for right in rights:
                if pair(left, right):
                    return True
        return False

    return test


def _any_const(pair: Callable[[Any, Any], bool], lget: Getter, const: Any) -> Predicate:
    def test(x: Any) -> bool:
        for left in lget(x):  # noqa: SIM110 - a loop costs less than any() over a generator
            if pair(left, const):
                return True
        return False

    return test


def _any_folded(test: Callable[[str, str], bool], lget: Getter, folded: str) -> Predicate:
    def match(x: Any) -> bool:
        for left in lget(x):  # noqa: SIM110 - as in _any_const
            if type(left) is str and test(left.casefold(), folded):
                return True
        return False

    return match


_NUMBER_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _aggregate_test(op: str, agg: Aggregate, const: Any) -> Predicate:
    """``<aggregate call> <op> <literal>``: what ``_make_test`` builds for it, without the
    one-element list of the call's value (an aggregate has one value, or None)."""
    pair = _PAIR[op]
    if op == "==" and type(const) is str:

        def test_string(ctx: Any) -> bool:
            value = ctx.aggregate(agg)
            return type(value) is str and value == const

        return test_string
    number_op = _NUMBER_OPS.get(op)
    if number_op is not None and type(const) in (int, float):
        # Both sides numbers: the operator alone decides (_kind(int|float) is "n").
        def test_number(ctx: Any) -> bool:
            value = ctx.aggregate(agg)
            kind = type(value)
            if kind is int or kind is float:
                return bool(number_op(value, const))
            return value is not None and pair(value, const)

        return test_number

    def test(ctx: Any) -> bool:
        value = ctx.aggregate(agg)
        return value is not None and pair(value, const)

    return test


def _make_test(
    op: str, lget: Getter, rget: Getter, right: _Value, single_key: str | None
) -> Predicate:
    """A comparison closure; fast paths for a string literal and a list of string literals
    (``==``/``in``), with a plain dict lookup when the left side is a one-key event path."""
    if isinstance(right, _Lit):
        const = right.value
        strings: frozenset[str] | None = None
        if op == "==" and type(const) is str:
            strings = frozenset((const,))
        elif op == "in" and isinstance(const, list) and all(type(v) is str for v in const):
            strings = frozenset(const)
        if strings is not None:
            members = strings
            if single_key is not None:
                key = single_key
                slow = _event_getter((key,))

                def test_key(event: Any) -> bool:
                    value = event.get(key)
                    if type(value) is str:
                        return value in members
                    return any(type(v) is str and v in members for v in slow(event))

                return test_key

            def test_strings(x: Any) -> bool:
                for v in lget(x):  # noqa: SIM110 - as in _any_const
                    if type(v) is str and v in members:
                        return True
                return False

            return test_strings
        if op == "in":
            return _any_pair(_eq, lget, rget)
        if op in _FOLDED and type(const) is str:
            return _any_folded(_FOLDED[op], lget, const.casefold())
        return _any_const(_PAIR[op], lget, const)
    return _any_pair(_PAIR[op], lget, rget)


# ------------------------------------------------------------------------ static types

_ANY = frozenset("bnso0")  # bool, number, string, other (object), may be null
_KIND_NAMES = {"b": "a boolean", "n": "a number", "s": "a string", "o": "an object", "l": "a list"}
_FUNCS = ("exists", "count", "sum", "min", "max", "last", "absent", "in_segment")
_SIGNATURES = {
    "exists": 'exists(filter, within="7d")',
    "count": 'count(filter, within="7d")',
    "sum": 'sum(event.<path>, filter, within="7d")',
    "min": 'min(event.<path>, filter, within="7d")',
    "max": 'max(event.<path>, filter, within="7d")',
    "last": 'last(event.<path>, filter, within="7d")',
    "absent": 'absent(filter, after=filter, within="7d")',
    "in_segment": 'in_segment("segment-id")',
}
_RESULT_TYPES = {
    "exists": frozenset("b"),
    "absent": frozenset("b"),
    "in_segment": frozenset("b"),
    "count": frozenset("n"),
    "sum": frozenset("n"),
    "min": frozenset("n0"),
    "max": frozenset("n0"),
    "last": _ANY,
}


def _literal_type(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset("0")
    if isinstance(value, list):
        return frozenset("l")
    return frozenset(_kind(value))


def _describe(types: frozenset[str]) -> str:
    names = [_KIND_NAMES[k] for k in "bnsol" if k in types]
    if "0" in types:
        names.append("null")
    return " or ".join(names)


def _is_event_type_path(node: _Value) -> bool:
    return isinstance(node, _Path) and node.root == "event" and node.parts == ("eventType",)


def _event_types(node: _Expr) -> frozenset[str] | None:
    """The eventType values a filter can match, or None when it may match any event."""
    if isinstance(node, _Cmp) and node.op in ("==", "in"):
        for path, other in ((node.left, node.right), (node.right, node.left)):
            if _is_event_type_path(path) and isinstance(other, _Lit):
                value = other.value
                if type(value) is str:
                    return frozenset((value,))
                if isinstance(value, list) and path is node.left and node.op == "in":
                    return frozenset(v for v in value if type(v) is str)
        return None
    if isinstance(node, _Junction):
        found = [_event_types(item) for item in node.items]
        known = [f for f in found if f is not None]
        if node.op == "and":
            return frozenset.intersection(*known) if known else None
        return frozenset().union(*known) if len(known) == len(found) else None
    if isinstance(node, _Bare) and isinstance(node.value, _Lit) and node.value.value is False:
        return frozenset()
    return None


# ------------------------------------------------------------------------- the compiler

_Mode = Literal["profile", "filter"]
_Caches = tuple[dict[str, Aggregate], dict[str, Absent]]


class _RuleCompiler:
    """Checks one rule and builds its closures; errors are collected, not raised."""

    def __init__(self, segment_id: str, text: str, known: frozenset[str], caches: _Caches) -> None:
        self.segment_id = segment_id
        self.text = text
        self.known = known
        self.agg_cache, self.absent_cache = caches
        self.errors: list[RuleError] = []
        self.aggregates: dict[str, Aggregate] = {}
        self.absents: dict[str, Absent] = {}
        self.profile_paths: set[str] = set()
        self.refs: dict[str, int] = {}  # referenced segment id -> position of the reference
        self.fields: set[str] = set()  # event paths of the filter being compiled
        self.aggregate_of: dict[Getter, Aggregate] = {}  # an aggregate call's getter -> call

    def error(self, pos: int, message: str) -> None:
        self.errors.append(RuleError(self.segment_id, pos + 1, message))

    # -- boolean expressions

    def expr(self, node: _Expr, mode: _Mode) -> _Check:
        text = self.text[node.start : node.end]
        if isinstance(node, _Junction):
            children = tuple(self.expr(item, mode) for item in node.items)
            fns = tuple(c.fn for c in children)
            fn = _all_of(fns) if node.op == "and" else _any_of(fns)
            return _Check(text, fn, node.op, children)
        if isinstance(node, _Not):
            child = self.expr(node.item, mode)
            inner = child.fn
            return _Check(text, lambda x: not inner(x), "not", (child,))
        if isinstance(node, _Cmp):
            return self.comparison(node, mode, text)
        return self.bare(node, mode, text)

    def bare(self, node: _Bare, mode: _Mode, text: str) -> _Check:
        value = node.value
        if isinstance(value, _Lit) and type(value.value) is bool:
            const = value.value
            return _Check(text, lambda x: const, "bare", left=lambda x: [const])
        before = len(self.errors)
        get, types, truth = self.value(value, mode)
        if truth is not None:
            return _Check(text, truth, "bare", left=get)
        if len(self.errors) > before:
            pass  # the value itself is wrong; one error is enough
        elif isinstance(value, _Path):
            self.error(
                node.start,
                f"{_render_value(value)} is not a condition; compare it, "
                f"e.g. {_render_value(value)} == true",
            )
        elif isinstance(value, _Call):
            self.error(
                node.start,
                f"{value.name}(...) is {_describe(types)}, not a condition; compare it, "
                f"e.g. {value.name}(...) > 0",
            )
        else:
            self.error(node.start, f"expected a condition, found {_describe(types)}")
        return _Check(text, lambda x: False, "bare", left=get)

    def comparison(self, node: _Cmp, mode: _Mode, text: str) -> _Check:
        op = node.op
        lget, ltypes, _ = self.value(node.left, mode)
        rget, rtypes, _ = self.value(node.right, mode)
        left, right = node.left, node.right
        lnull = isinstance(left, _Lit) and left.value is None
        rnull = isinstance(right, _Lit) and right.value is None
        blame = right if isinstance(right, _Lit) else left
        right_is_list = isinstance(right, _Lit) and isinstance(right.value, list)

        def check(fn: Predicate) -> _Check:
            return _Check(
                text, fn, "cmp", op=op, left=lget, right=rget, right_is_list=right_is_list
            )

        if isinstance(left, _Lit) and isinstance(left.value, list):
            self.error(left.start, "a list is only allowed on the right of 'in'")
            return check(lambda x: False)
        if right_is_list and op != "in":
            self.error(right.start, "a list is only allowed on the right of 'in'")
            return check(lambda x: False)
        if lnull or rnull:
            if op not in ("==", "!="):
                self.error(
                    (left if lnull else right).start,
                    "null can only be compared with == or != (missing-ness)",
                )
                return check(lambda x: False)
            other, other_types = (rget, rtypes) if lnull else (lget, ltypes)
            if lnull and rnull:
                return check(lambda x: op == "==")
            if "0" not in other_types:
                self.error(
                    (left if lnull else right).start,
                    f"{_render_value(right if lnull else left)} is never null",
                )
            if op == "==":
                return check(lambda x: not other(x))
            return check(lambda x: bool(other(x)))
        if op == "in":
            if not (right_is_list or isinstance(right, _Path)):
                self.error(right.start, "the right of 'in' must be a list literal or a path")
                return check(lambda x: False)
            if right_is_list:
                assert isinstance(right, _Lit)
                if any(v is None for v in right.value):
                    self.error(right.start, "null in a list never matches; use == null")
                if right.value:
                    rtypes = frozenset().union(*(_literal_type(v) for v in right.value))
                    rtypes -= frozenset("0")
                else:
                    rtypes = _ANY
            if not (ltypes & rtypes):
                self.error(
                    blame.start, f"cannot look {_describe(ltypes)} up in {_describe(rtypes)}"
                )
        elif op in ("==", "!="):
            if not (ltypes & rtypes):
                self.error(
                    blame.start, f"cannot compare {_describe(ltypes)} with {_describe(rtypes)}"
                )
        elif op in ("<", "<=", ">", ">="):
            for side, types in ((left, ltypes), (right, rtypes)):
                if not (types & frozenset("ns")):
                    self.error(
                        side.start, f"'{op}' needs numbers or strings, not {_describe(types)}"
                    )
                    break
            else:
                if not (ltypes & rtypes & frozenset("ns")):
                    self.error(
                        blame.start, f"cannot compare {_describe(ltypes)} with {_describe(rtypes)}"
                    )
        elif op == "startswith" or op in _FOLDED:
            for side, types in ((left, ltypes), (right, rtypes)):
                if not (types & frozenset("s")):
                    self.error(side.start, f"'{op}' needs strings, not {_describe(types)}")
                    break
        elif not (ltypes & frozenset("so")):
            self.error(
                left.start,
                f"'contains' needs a string or a path on the left, not {_describe(ltypes)}",
            )
        agg = self.aggregate_of.get(lget)
        if (
            agg is not None
            and isinstance(right, _Lit)
            and right.value is not None
            and not isinstance(right.value, list)
            and op != "in"
        ):
            return check(_aggregate_test(op, agg, right.value))
        single_key = None
        if mode == "filter" and isinstance(left, _Path) and len(left.parts) == 1:
            single_key = left.parts[0]
        return check(_make_test(op, lget, rget, right, single_key))

    # -- values

    def value(self, node: _Value, mode: _Mode) -> tuple[Getter, frozenset[str], Predicate | None]:
        """A getter of the node's values, its static type and, for boolean calls, a predicate."""
        if isinstance(node, _Lit):
            items = list(node.value) if isinstance(node.value, list) else [node.value]
            items = [v for v in items if v is not None]
            return (lambda x: items), _literal_type(node.value), None
        if isinstance(node, _Name):
            if node.name in ("profile", "event"):
                self.error(node.start, f"{node.name} needs a field: {node.name}.<field>")
            else:
                self.error(
                    node.start, f"unknown name {node.name!r}; paths start with profile. or event."
                )
            return _nothing, _ANY, None
        if isinstance(node, _Path):
            return self.path(node, mode), _ANY, None
        if mode == "filter":
            self.error(
                node.start,
                "function calls are not allowed inside an event filter "
                "(only event.<path> and literals)",
            )
            return _nothing, _ANY, None
        return self.call(node)

    def path(self, node: _Path, mode: _Mode) -> Getter:
        dotted = ".".join(node.parts)
        if node.root == "profile" and mode == "profile":
            self.profile_paths.add(dotted)
            return _profile_getter(dotted)
        if node.root == "event" and mode == "filter":
            self.fields.add(dotted)
            return _event_getter(node.parts)
        if node.root == "event":
            self.error(
                node.start,
                f"event.{dotted} is only allowed inside an aggregate call, "
                f"e.g. exists(event.{dotted} == ...)",
            )
        elif node.root == "profile":
            self.error(
                node.start,
                "profile paths are not allowed inside an event filter "
                "(only event.<path> and literals)",
            )
        else:
            self.error(
                node.start,
                f"unknown name {_render_value(node)!r}; paths start with profile. or event.",
            )
        return _nothing

    def call(self, node: _Call) -> tuple[Getter, frozenset[str], Predicate | None]:
        name = node.name
        failed: tuple[Getter, frozenset[str], Predicate | None] = (_nothing, _ANY, None)
        if name not in _FUNCS:
            self.error(node.start, f"unknown function {name!r}; known: {', '.join(sorted(_FUNCS))}")
            return failed
        types = _RESULT_TYPES[name]
        failed = (_nothing, types, None)
        positional: list[_Expr] = []
        kwargs: dict[str, _Kwarg] = {}
        allowed = {"absent": ("after", "within"), "in_segment": ()}.get(name, ("within",))
        ok = True
        for arg in node.args:
            if isinstance(arg, _Kwarg):
                if arg.name not in allowed:
                    self.error(arg.start, f"{name}() has no argument {arg.name!r}")
                    ok = False
                elif arg.name in kwargs:
                    self.error(arg.start, f"{name}() got {arg.name}= twice")
                    ok = False
                kwargs[arg.name] = arg
            else:
                if kwargs:
                    self.error(arg.start, "a positional argument cannot follow a keyword argument")
                    ok = False
                positional.append(arg)
        want = 2 if name in ("sum", "min", "max", "last") else 1
        missing_kw = [k for k in allowed if name == "absent" and k not in kwargs]
        if len(positional) != want or missing_kw:
            self.error(node.start, f"wrong arguments; usage: {_SIGNATURES[name]}")
            return failed
        if not ok:
            return failed
        within_ms = None
        if "within" in kwargs:
            within_ms = self.duration(kwargs["within"])
        if name == "in_segment":
            return self.segment_ref(positional[0])
        # After a bad duration the filters are still checked, so that every error is reported.
        if name == "absent":
            result = self.absent(positional[0], kwargs["after"].value, within_ms or 1)
        else:
            result = self.aggregate(node, positional, within_ms)
        if "within" in kwargs and within_ms is None:
            return failed
        return result

    def duration(self, kwarg: _Kwarg) -> int | None:
        value = kwarg.value
        if not (
            isinstance(value, _Bare)
            and isinstance(value.value, _Lit)
            and isinstance(value.value.value, str)
        ):
            self.error(value.start, 'within= takes a duration string such as "7d"')
            return None
        try:
            return parse_duration(value.value.value)
        except ValueError as e:
            self.error(value.start, str(e))
            return None

    def filter(self, node: _Expr) -> tuple[_Check, frozenset[str]]:
        self.fields = set()
        check = self.expr(node, "filter")
        return check, frozenset(self.fields)

    def aggregate(
        self, node: _Call, positional: list[_Expr], within_ms: int | None
    ) -> tuple[Getter, frozenset[str], Predicate | None]:
        func = cast(Literal["exists", "count", "sum", "min", "max", "last"], node.name)
        types = _RESULT_TYPES[func]
        values: Callable[[Mapping[str, Any]], list[Any]] | None = None
        value_fields: frozenset[str] = frozenset()
        filter_node = positional[-1]
        rendered = [_render(filter_node)]
        if func not in ("exists", "count"):
            first = positional[0]
            if not (
                isinstance(first, _Bare)
                and isinstance(first.value, _Path)
                and first.value.root == "event"
            ):
                self.error(first.start, f"the first argument of {func}() must be an event.<path>")
                return _nothing, types, None
            value_path = first.value
            value_fields = frozenset((".".join(value_path.parts),))
            get = _event_getter(value_path.parts)
            values = get if func == "last" else _numbers_of(get)
            rendered.insert(0, _render_value(value_path))
        check, fields = self.filter(filter_node)
        kwargs = {} if within_ms is None else {"within": f'"{_format_duration(within_ms)}"'}
        canonical = _canonical_call(func, rendered, kwargs)
        agg = self.agg_cache.get(canonical)
        if agg is None:
            agg = Aggregate(
                key=_key(func, canonical),
                func=func,
                matches=check.fn,
                values=values,
                within_ms=within_ms,
                event_types=_event_types(filter_node),
                fields=fields | value_fields,
                text=canonical,
            )
            self.agg_cache[canonical] = agg
        self.aggregates.setdefault(agg.key, agg)
        shared = agg

        def get_value(ctx: Any) -> list[Any]:
            value = ctx.aggregate(shared)
            return [] if value is None else [value]

        self.aggregate_of[get_value] = shared

        if func == "exists":
            return get_value, types, lambda ctx: bool(ctx.aggregate(shared))
        return get_value, types, None

    def absent(
        self, missing_node: _Expr, after_node: _Expr, within_ms: int
    ) -> tuple[Getter, frozenset[str], Predicate | None]:
        missing, missing_fields = self.filter(missing_node)
        after, after_fields = self.filter(after_node)
        canonical = _canonical_call(
            "absent",
            [_render(missing_node)],
            {"after": _render(after_node), "within": f'"{_format_duration(within_ms)}"'},
        )
        absent = self.absent_cache.get(canonical)
        if absent is None:
            missing_types = _event_types(missing_node)
            after_types = _event_types(after_node)
            absent = Absent(
                key=_key("absent", canonical),
                after=after.fn,
                missing=missing.fn,
                within_ms=within_ms,
                event_types=(
                    None
                    if missing_types is None or after_types is None
                    else missing_types | after_types
                ),
                fields=missing_fields | after_fields,
                text=canonical,
            )
            self.absent_cache[canonical] = absent
        self.absents.setdefault(absent.key, absent)
        shared = absent
        return (
            (lambda ctx: [bool(ctx.absent(shared))]),
            frozenset("b"),
            (lambda ctx: bool(ctx.absent(shared))),
        )

    def segment_ref(self, arg: _Expr) -> tuple[Getter, frozenset[str], Predicate | None]:
        types = frozenset("b")
        if not (
            isinstance(arg, _Bare)
            and isinstance(arg.value, _Lit)
            and isinstance(arg.value.value, str)
        ):
            self.error(arg.start, 'in_segment() takes a segment id string, e.g. in_segment("vip")')
            return _nothing, types, None
        ref = arg.value.value
        if ref not in self.known:
            self.error(arg.start, f"unknown segment {ref!r}")
            return _nothing, types, None
        self.refs.setdefault(ref, arg.start)
        return (
            (lambda ctx: [bool(ctx.in_segment(ref))]),
            types,
            (lambda ctx: bool(ctx.in_segment(ref))),
        )


def _nothing(x: Any) -> list[Any]:
    return []


def _all_of(fns: tuple[Predicate, ...]) -> Predicate:
    if len(fns) == 2:
        first, second = fns
        return lambda x: first(x) and second(x)
    return lambda x: all(fn(x) for fn in fns)


def _any_of(fns: tuple[Predicate, ...]) -> Predicate:
    if len(fns) == 2:
        first, second = fns
        return lambda x: first(x) or second(x)
    return lambda x: any(fn(x) for fn in fns)


def _profile_getter(path: str) -> Getter:
    def get(ctx: Any) -> list[Any]:
        values: list[Any] = ctx.profile_values(path)
        if None in values:
            return [v for v in values if v is not None]
        return values

    return get


def _numbers_of(get: Getter) -> Callable[[Mapping[str, Any]], list[Any]]:
    low_int, high_int, limit = -_MAX_INT, _MAX_INT, _MAX_FLOAT

    def numbers(event: Mapping[str, Any]) -> list[Any]:
        # _is_number inlined: `-limit < v < limit` is false for nan and the infinities too.
        return [
            v
            for v in get(event)
            if (type(v) is int and low_int <= v < high_int)
            or (type(v) is float and -limit < v < limit)
        ]

    return numbers


# ---------------------------------------------------------------------- whole rule sets


def _components(nodes: list[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively; dependencies come out first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges.get(root, ())))]
        while work:
            node, pending = work[-1]
            descended = False
            for nxt in pending:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges.get(nxt, ()))))
                    descended = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(component)
    return out


def _cycle_through(
    start: str, first: str, edges: Mapping[str, list[str]], inside: set[str]
) -> list[str]:
    """The cycle start → first → … → start along a shortest path inside one component."""
    previous: dict[str, str] = {}
    frontier = [first]
    seen = {first}
    while frontier and start not in seen:
        following: list[str] = []
        for node in frontier:
            for nxt in edges.get(node, ()):
                if nxt in inside and nxt not in seen:
                    seen.add(nxt)
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    path = [start]
    node = start
    while node != first:
        node = previous[node]
        path.append(node)
    return [start, *reversed(path)] if first != start else [start, start]


def compile_rules(segments: Sequence[tuple[str, str]]) -> tuple[CompiledRule, ...]:
    """Compile ``(segment_id, rule_text)`` pairs. The result lists every segment after the
    segments it refers to with ``in_segment``. Raises RuleErrors with every problem found."""
    items = list(segments)
    errors: list[RuleError] = []
    position: dict[str, int] = {}
    for sid, _ in items:
        if sid in position:
            errors.append(RuleError(sid, 1, "duplicate segment id"))
        else:
            position[sid] = len(position)
    known = frozenset(position)
    caches: _Caches = ({}, {})
    compiled: dict[str, CompiledRule] = {}
    edges: dict[str, list[str]] = {}
    ref_pos: dict[str, dict[str, int]] = {}
    done: set[str] = set()
    for sid, text in items:
        if sid in done:
            continue
        done.add(sid)
        try:
            tree = _parse(text)
        except _SyntaxProblem as problem:
            errors.append(RuleError(sid, problem.pos + 1, problem.message))
            continue
        compiler = _RuleCompiler(sid, text, known, caches)
        root = compiler.expr(tree, "profile")
        errors.extend(compiler.errors)
        edges[sid] = sorted(compiler.refs, key=compiler.refs.__getitem__)
        ref_pos[sid] = compiler.refs
        if not compiler.errors:
            compiled[sid] = CompiledRule(
                segment_id=sid,
                text=text,
                aggregates=tuple(compiler.aggregates.values()),
                absents=tuple(compiler.absents.values()),
                profile_paths=frozenset(compiler.profile_paths),
                segment_refs=frozenset(compiler.refs),
                evaluate=root.fn,
                _root=root,
            )
    order: list[str] = []
    for component in _components(list(edges), edges):
        members = set(component)
        if len(component) == 1 and component[0] not in edges.get(component[0], ()):
            order.append(component[0])
            continue
        for sid in sorted(component, key=position.__getitem__):
            target = next(t for t in edges[sid] if t in members)
            cycle = _cycle_through(sid, target, edges, members)
            errors.append(
                RuleError(
                    sid,
                    ref_pos[sid][target] + 1,
                    "in_segment cycle: " + " → ".join(cycle),
                )
            )
    if errors:
        errors.sort(key=lambda e: (position.get(e.segment_id, 0), e.column))
        raise RuleErrors(errors)
    return tuple(compiled[sid] for sid in order)
