"""Static checks: the types of values in a rule, the functions' signatures, and the problems
found before a rule ever runs.

A rule that cannot mean what it says (``count(...) == "a"``, ``profile.a < true``, ``x in 5``,
an unknown function or segment) is refused when it is loaded, with its segment and column,
instead of silently matching nobody. Only what is certain is refused: a path may hold any kind
of value, so ``profile.age > "x"`` is allowed.

Also here, one static fact the engine uses: which eventType values a filter can match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from operators.rules.compare import FOLDED, value_kind
from operators.rules.duration import parse_duration
from operators.rules.nodes import (
    Bare,
    Call,
    Cmp,
    Expr,
    Junction,
    Kwarg,
    Lit,
    Path,
    Value,
    render_value,
)

# A static type is a set of letters: the value kinds of compare.value_kind (b n s o), "l" for a
# list literal and "0" for "may be null". A path may hold anything, hence ANY.
ANY = frozenset("bnso0")  # bool, number, string, other (object), may be null
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
RESULT_TYPES = {
    "exists": frozenset("b"),
    "absent": frozenset("b"),
    "in_segment": frozenset("b"),
    "count": frozenset("n"),
    "sum": frozenset("n"),
    "min": frozenset("n0"),
    "max": frozenset("n0"),
    "last": ANY,
}


def literal_type(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset("0")
    if isinstance(value, list):
        return frozenset("l")
    return frozenset(value_kind(value))


def describe(types: frozenset[str]) -> str:
    names = [_KIND_NAMES[k] for k in "bnsol" if k in types]
    if "0" in types:
        names.append("null")
    return " or ".join(names)


def _is_event_type_path(node: Value) -> bool:
    return isinstance(node, Path) and node.root == "event" and node.parts == ("eventType",)


def filter_event_types(node: Expr) -> frozenset[str] | None:
    """The eventType values a filter can match, or None when it may match any event (the
    segment index tests an event only against the filters of its type)."""
    if isinstance(node, Cmp) and node.op in ("==", "in"):
        for path, other in ((node.left, node.right), (node.right, node.left)):
            if _is_event_type_path(path) and isinstance(other, Lit):
                value = other.value
                if type(value) is str:
                    return frozenset((value,))
                if isinstance(value, list) and path is node.left and node.op == "in":
                    return frozenset(v for v in value if type(v) is str)
        return None
    if isinstance(node, Junction):
        found = [filter_event_types(item) for item in node.items]
        known = [f for f in found if f is not None]
        if node.op == "and":
            return frozenset.intersection(*known) if known else None
        return frozenset().union(*known) if len(known) == len(found) else None
    if isinstance(node, Bare) and isinstance(node.value, Lit) and node.value.value is False:
        return frozenset()
    return None


# -- the checks the compiler asks for; each returns problems (0-based offset, message) in the
# order they are reported, and the compiler turns them into RuleErrors for its segment.

Problem: TypeAlias = tuple[int, str]


def not_a_condition(value: Value, types: frozenset[str]) -> str:
    """Why a value standing alone is not a condition, with the comparison that would be."""
    if isinstance(value, Path):
        return (
            f"{render_value(value)} is not a condition; compare it, "
            f"e.g. {render_value(value)} == true"
        )
    if isinstance(value, Call):
        return (
            f"{value.name}(...) is {describe(types)}, not a condition; compare it, "
            f"e.g. {value.name}(...) > 0"
        )
    return f"expected a condition, found {describe(types)}"


def operand_problems(
    op: str, left: Value, right: Value, ltypes: frozenset[str], rtypes: frozenset[str]
) -> list[Problem]:
    """Whether the operands of ``left <op> right`` can ever meet, given their static types.
    Called once lists and null are known to be where they may be (the compiler checks that
    first, because it also picks the closure)."""
    problems: list[Problem] = []
    blame = right if isinstance(right, Lit) else left
    if op == "in":
        if isinstance(right, Lit) and isinstance(right.value, list):
            if any(v is None for v in right.value):
                problems.append((right.start, "null in a list never matches; use == null"))
            if right.value:
                rtypes = frozenset().union(*(literal_type(v) for v in right.value))
                rtypes -= frozenset("0")
            else:
                rtypes = ANY
        if not (ltypes & rtypes):
            problems.append(
                (blame.start, f"cannot look {describe(ltypes)} up in {describe(rtypes)}")
            )
    elif op in ("==", "!="):
        if not (ltypes & rtypes):
            problems.append(
                (blame.start, f"cannot compare {describe(ltypes)} with {describe(rtypes)}")
            )
    elif op in ("<", "<=", ">", ">="):
        for side, types in ((left, ltypes), (right, rtypes)):
            if not (types & frozenset("ns")):
                problems.append(
                    (side.start, f"'{op}' needs numbers or strings, not {describe(types)}")
                )
                break
        else:
            if not (ltypes & rtypes & frozenset("ns")):
                problems.append(
                    (blame.start, f"cannot compare {describe(ltypes)} with {describe(rtypes)}")
                )
    elif op == "startswith" or op in FOLDED:
        for side, types in ((left, ltypes), (right, rtypes)):
            if not (types & frozenset("s")):
                problems.append((side.start, f"'{op}' needs strings, not {describe(types)}"))
                break
    elif not (ltypes & frozenset("so")):
        problems.append(
            (
                left.start,
                f"'contains' needs a string or a path on the left, not {describe(ltypes)}",
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class Arguments:
    """A call's arguments, bound: positional in order, keywords by name."""

    positional: tuple[Expr, ...]
    keywords: dict[str, Kwarg]


def bind_arguments(node: Call) -> tuple[Arguments | None, list[Problem]]:
    """The call's arguments checked against its signature; None when the call is unusable."""
    name = node.name
    if name not in _FUNCS:
        return None, [
            (node.start, f"unknown function {name!r}; known: {', '.join(sorted(_FUNCS))}")
        ]
    problems: list[Problem] = []
    positional: list[Expr] = []
    kwargs: dict[str, Kwarg] = {}
    allowed = {"absent": ("after", "within"), "in_segment": ()}.get(name, ("within",))
    for arg in node.args:
        if isinstance(arg, Kwarg):
            if arg.name not in allowed:
                problems.append((arg.start, f"{name}() has no argument {arg.name!r}"))
            elif arg.name in kwargs:
                problems.append((arg.start, f"{name}() got {arg.name}= twice"))
            kwargs[arg.name] = arg
        else:
            if kwargs:
                problems.append(
                    (arg.start, "a positional argument cannot follow a keyword argument")
                )
            positional.append(arg)
    want = 2 if name in ("sum", "min", "max", "last") else 1
    missing_kw = [k for k in allowed if name == "absent" and k not in kwargs]
    if len(positional) != want or missing_kw:
        problems.append((node.start, f"wrong arguments; usage: {_SIGNATURES[name]}"))
        return None, problems
    if problems:
        return None, problems
    return Arguments(tuple(positional), kwargs), problems


def parse_within(kwarg: Kwarg) -> tuple[int | None, Problem | None]:
    """``within=`` as milliseconds, or the problem with it."""
    value = kwarg.value
    if not (
        isinstance(value, Bare)
        and isinstance(value.value, Lit)
        and isinstance(value.value.value, str)
    ):
        return None, (value.start, 'within= takes a duration string such as "7d"')
    try:
        return parse_duration(value.value.value), None
    except ValueError as e:
        return None, (value.start, str(e))


def referenced_segment(arg: Expr, known: frozenset[str]) -> tuple[str | None, Problem | None]:
    """The segment id ``in_segment()`` names, or the problem with it (not a string, unknown)."""
    if not (
        isinstance(arg, Bare) and isinstance(arg.value, Lit) and isinstance(arg.value.value, str)
    ):
        return None, (arg.start, 'in_segment() takes a segment id string, e.g. in_segment("vip")')
    ref = arg.value.value
    if ref not in known:
        return None, (arg.start, f"unknown segment {ref!r}")
    return ref, None
