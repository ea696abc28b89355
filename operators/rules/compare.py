"""The runtime comparisons: what ``a <op> b`` means for the values a rule reads.

* A comparison is true when ANY left value and ANY right value pass. A side with no value
  (missing, null) makes every comparison false, ``!=`` included. Values of different kinds
  (string, number, bool, other) never compare: ``1 == true``, ``"1" == 1`` and ``"a" < 1`` are
  false, never an exception. ``int`` and ``float`` are both numbers (``1 == 1.0``).
* ``in``: true when a left value equals one of the right values. ``contains``: a left value
  equals the right value, or both are strings and the right is a substring of the left.
  ``startswith``: strings only.
* ``iequals``, ``icontains``, ``istartswith``: ``==``, ``contains`` and ``startswith`` on strings
  compared without regard to case (Unicode case folding); strings only on both sides.

(``== null`` / ``!= null`` test missing-ness and are built by the compiler, not here.)

These closures run once per event per filter and once per profile per rule, so the common
shapes (a string literal, a list of string literals, a one-key event path, an aggregate against
a number) get specialised closures that must agree with the generic ``_any_pair`` path
(tests/property/test_rule_compare_props.py checks the fused aggregate one against the semantics
above).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from operators.rules.compiled import Aggregate
from operators.rules.nodes import Lit, Value
from operators.rules.paths import Getter, Predicate, event_getter


def value_kind(value: Any) -> str:
    """``s``, ``b``, ``n`` or ``o`` (other): values of different kinds never compare. The same
    letters are the static types in ``check.py``. bool is tested before int: it is a subclass."""
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
    return value_kind(a) == value_kind(b) and bool(a == b)


def _ne(a: Any, b: Any) -> bool:
    return value_kind(a) == value_kind(b) and bool(a != b)


def _ordered(a: Any, b: Any) -> bool:
    kind = value_kind(a)
    return kind in ("n", "s") and kind == value_kind(b)


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
FOLDED: dict[str, Callable[[str, str], bool]] = {
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
    **{op: _folded(test) for op, test in FOLDED.items()},
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


def aggregate_test(op: str, agg: Aggregate, const: Any) -> Predicate:
    """``<aggregate call> <op> <literal>``: what ``make_test`` builds for it, without the
    one-element list of the call's value (an aggregate has one value, or None)."""
    pair = _PAIR[op]
    if op == "==" and type(const) is str:

        def test_string(ctx: Any) -> bool:
            value = ctx.aggregate(agg)
            return type(value) is str and value == const

        return test_string
    number_op = _NUMBER_OPS.get(op)
    if number_op is not None and type(const) in (int, float):
        # Both sides numbers: the operator alone decides (value_kind(int|float) is "n").
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


def make_test(
    op: str, lget: Getter, rget: Getter, right: Value, single_key: str | None
) -> Predicate:
    """A comparison closure; fast paths for a string literal and a list of string literals
    (``==``/``in``), with a plain dict lookup when the left side is a one-key event path."""
    if isinstance(right, Lit):
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
                slow = event_getter((key,))

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
        if op in FOLDED and type(const) is str:
            return _any_folded(FOLDED[op], lget, const.casefold())
        return _any_const(_PAIR[op], lget, const)
    return _any_pair(_PAIR[op], lget, rget)
