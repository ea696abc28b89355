"""Rule text → AST (``nodes.py``), or a SyntaxProblem at an offset with a readable message.

Nothing here evaluates text as Python. String literals are unquoted here (JSON-style escapes
plus ``\\'``), and out-of-range numbers and nested lists are refused here, so that everything
after parsing works on plain Python values.
"""

from __future__ import annotations

import math
import re
from typing import Literal, cast

from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from operators.rules.grammar import describe_expected, parser
from operators.rules.nodes import (
    Bare,
    Call,
    Cmp,
    Expr,
    Junction,
    Kwarg,
    Lit,
    Name,
    Not,
    Path,
    Value,
)


class SyntaxProblem(Exception):
    """A syntax error at a 0-based offset; the caller knows the segment and makes it a RuleError."""

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
            raise SyntaxProblem(pos, f"bad escape '\\{nxt}' in a string")
    return "".join(out)


def _span(tree: Tree[Token]) -> tuple[int, int]:
    return tree.meta.start_pos, tree.meta.end_pos


def _to_literal(node: Tree[Token]) -> Lit:
    start, end = _span(node)
    if node.data == "string":
        return Lit(_unquote(cast(Token, node.children[0])), start, end)
    if node.data == "number":
        raw = str(node.children[0])
        if any(c in raw for c in ".eE"):
            value = float(raw)
            if not math.isfinite(value):
                raise SyntaxProblem(start, f"number {raw} is out of range")
            return Lit(value, start, end)
        return Lit(int(raw), start, end)
    if node.data == "const":
        return Lit({"true": True, "false": False, "null": None}[str(node.children[0])], start, end)
    items = [_to_literal(cast(Tree[Token], c)) for c in node.children if c is not None]
    for item in items:
        if isinstance(item.value, list):
            raise SyntaxProblem(item.start, "lists inside lists are not supported")
    return Lit([item.value for item in items], start, end)


def _to_value(node: Tree[Token]) -> Value:
    start, end = _span(node)
    if node.data == "path":
        root, *parts = str(node.children[0]).split(".")
        return Path(root, tuple(parts), start, end)
    if node.data == "name":
        return Name(str(node.children[0]), start, end)
    if node.data == "call":
        name = cast(Token, node.children[0])
        args: list[Expr | Kwarg] = []
        for child in node.children[1:]:
            if child is None:
                continue
            tree = cast(Tree[Token], child)
            if tree.data == "kwarg":
                kstart, kend = _span(tree)
                args.append(
                    Kwarg(
                        str(tree.children[0]),
                        _to_expr(cast(Tree[Token], tree.children[1])),
                        kstart,
                        kend,
                    )
                )
            else:
                args.append(_to_expr(tree))
        return Call(str(name), tuple(args), start, end)
    return _to_literal(node)


def _to_expr(node: Tree[Token]) -> Expr:
    start, end = _span(node)
    kids = [cast(Tree[Token], c) for c in node.children]
    if node.data in ("or_expr", "and_expr"):
        op: Literal["and", "or"] = "or" if node.data == "or_expr" else "and"
        items: list[Expr] = []
        for kid in kids:
            expr = _to_expr(kid)
            if isinstance(expr, Junction) and expr.op == op:
                items.extend(expr.items)
            else:
                items.append(expr)
        return Junction(op, tuple(items), start, end)
    if node.data == "neg":
        return Not(_to_expr(kids[0]), start, end)
    if node.data == "cmp":
        return Cmp(str(kids[1].children[0]), _to_value(kids[0]), _to_value(kids[2]), start, end)
    if node.data == "bare":
        return Bare(_to_value(kids[0]), start, end)
    raise AssertionError(f"unexpected rule node {node.data}")  # pragma: no cover


def parse_rule(text: str) -> Expr:
    if not isinstance(text, str):
        raise SyntaxProblem(0, f"a rule is a string, not {type(text).__name__}")
    if not text.strip():
        raise SyntaxProblem(0, "empty rule")
    try:
        tree = parser().parse(text)
    except UnexpectedToken as e:
        if e.token.type == "$END":
            raise SyntaxProblem(
                len(text), f"unexpected end of rule; expected {describe_expected(e.expected)}"
            ) from None
        raise SyntaxProblem(
            e.token.start_pos or 0,
            f"unexpected {str(e.token)!r}; expected {describe_expected(e.expected)}",
        ) from None
    except UnexpectedCharacters as e:
        pos = e.pos_in_stream or 0
        rest = text[pos:]
        what = "an unterminated string" if rest[:1] in ("'", '"') else repr(rest[:1])
        raise SyntaxProblem(pos, f"unexpected {what}") from None
    except UnexpectedInput as e:  # pragma: no cover - the LALR parser raises the two above
        raise SyntaxProblem(max(getattr(e, "pos_in_stream", 0) or 0, 0), "syntax error") from None
    if isinstance(tree, Token):  # pragma: no cover - the grammar always yields a tree
        raise SyntaxProblem(0, "syntax error")
    return _to_expr(tree)
