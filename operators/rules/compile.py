"""One rule's AST → nested closures, with every problem collected (not raised) as a RuleError.

The compiler walks the AST once: each boolean sub-expression becomes a ``Check`` (its closure,
kept for ``explain``), each value a getter with its static type. Aggregate and absent calls are
shared across a rule set through ``Caches`` keyed by canonical text, so two rules writing the
same call read one piece of state. The static checks live in ``check.py``, the comparisons in
``compare.py``; this module decides which closure each node becomes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

from operators.rules.check import (
    ANY,
    RESULT_TYPES,
    bind_arguments,
    filter_event_types,
    literal_type,
    not_a_condition,
    operand_problems,
    parse_within,
    referenced_segment,
)
from operators.rules.compare import aggregate_test, make_test
from operators.rules.compiled import Absent, Aggregate, Check
from operators.rules.duration import format_duration
from operators.rules.errors import RuleError
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
    call_key,
    canonical_call,
    render,
    render_value,
)
from operators.rules.paths import Getter, Predicate, event_getter, numbers_of, profile_getter

# "profile": a rule's top level (profile paths, calls); "filter": inside an aggregate call,
# where only event paths and literals may appear.
_Mode = Literal["profile", "filter"]
# Shared by every rule of one set: canonical text -> the one Aggregate / Absent for it.
Caches = tuple[dict[str, Aggregate], dict[str, Absent]]


class RuleCompiler:
    """Checks one rule and builds its closures; errors are collected, not raised."""

    def __init__(
        self,
        segment_id: str,
        text: str,
        known: frozenset[str],
        caches: Caches,
        traits: Mapping[str, Aggregate] | None = None,
    ) -> None:
        self.segment_id = segment_id
        self.traits: Mapping[str, Aggregate] = traits or {}
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

    def expr(self, node: Expr, mode: _Mode) -> Check:
        text = self.text[node.start : node.end]
        if isinstance(node, Junction):
            children = tuple(self.expr(item, mode) for item in node.items)
            fns = tuple(c.fn for c in children)
            fn = _all_of(fns) if node.op == "and" else _any_of(fns)
            return Check(text, fn, node.op, children)
        if isinstance(node, Not):
            child = self.expr(node.item, mode)
            inner = child.fn
            return Check(text, lambda x: not inner(x), "not", (child,))
        if isinstance(node, Cmp):
            return self.comparison(node, mode, text)
        return self.bare(node, mode, text)

    def bare(self, node: Bare, mode: _Mode, text: str) -> Check:
        value = node.value
        if isinstance(value, Lit) and type(value.value) is bool:
            const = value.value
            return Check(text, lambda x: const, "bare", left=lambda x: [const])
        before = len(self.errors)
        get, types, truth = self.value(value, mode)
        if truth is not None:
            return Check(text, truth, "bare", left=get)
        if len(self.errors) == before:  # else the value itself is wrong; one error is enough
            self.error(node.start, not_a_condition(value, types))
        return Check(text, lambda x: False, "bare", left=get)

    def comparison(self, node: Cmp, mode: _Mode, text: str) -> Check:
        op = node.op
        lget, ltypes, _ = self.value(node.left, mode)
        rget, rtypes, _ = self.value(node.right, mode)
        left, right = node.left, node.right
        lnull = isinstance(left, Lit) and left.value is None
        rnull = isinstance(right, Lit) and right.value is None
        right_is_list = isinstance(right, Lit) and isinstance(right.value, list)

        def check(fn: Predicate) -> Check:
            return Check(text, fn, "cmp", op=op, left=lget, right=rget, right_is_list=right_is_list)

        if isinstance(left, Lit) and isinstance(left.value, list):
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
                    f"{render_value(right if lnull else left)} is never null",
                )
            if op == "==":
                return check(lambda x: not other(x))
            return check(lambda x: bool(other(x)))
        if op == "in" and not (right_is_list or isinstance(right, Path)):
            self.error(right.start, "the right of 'in' must be a list literal or a path")
            return check(lambda x: False)
        for pos, message in operand_problems(op, left, right, ltypes, rtypes):
            self.error(pos, message)
        agg = self.aggregate_of.get(lget)
        if (
            agg is not None
            and isinstance(right, Lit)
            and right.value is not None
            and not isinstance(right.value, list)
            and op != "in"
        ):
            return check(aggregate_test(op, agg, right.value))
        single_key = None
        if mode == "filter" and isinstance(left, Path) and len(left.parts) == 1:
            single_key = left.parts[0]
        return check(make_test(op, lget, rget, right, single_key))

    # -- values

    def value(self, node: Value, mode: _Mode) -> tuple[Getter, frozenset[str], Predicate | None]:
        """A getter of the node's values, its static type and, for boolean calls, a predicate."""
        if isinstance(node, Lit):
            items = list(node.value) if isinstance(node.value, list) else [node.value]
            items = [v for v in items if v is not None]
            return (lambda x: items), literal_type(node.value), None
        if isinstance(node, Name):
            if node.name in ("profile", "event"):
                self.error(node.start, f"{node.name} needs a field: {node.name}.<field>")
            else:
                self.error(
                    node.start, f"unknown name {node.name!r}; paths start with profile. or event."
                )
            return _nothing, ANY, None
        if isinstance(node, Path):
            if node.root == "profile" and mode == "profile" and node.parts[0] == "traits":
                return self.trait(node)
            return self.path(node, mode), ANY, None
        if mode == "filter":
            self.error(
                node.start,
                "function calls are not allowed inside an event filter "
                "(only event.<path> and literals)",
            )
            return _nothing, ANY, None
        return self.call(node)

    def path(self, node: Path, mode: _Mode) -> Getter:
        dotted = ".".join(node.parts)
        if node.root == "profile" and mode == "profile":
            self.profile_paths.add(dotted)
            return profile_getter(dotted)
        if node.root == "event" and mode == "filter":
            self.fields.add(dotted)
            return event_getter(node.parts)
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
                f"unknown name {render_value(node)!r}; paths start with profile. or event.",
            )
        return _nothing

    def trait(self, node: Path) -> tuple[Getter, frozenset[str], Predicate | None]:
        """``profile.traits.NAME``: the trait's aggregate, read like the call it is, so the rule
        is evaluated again when its input changes and gets timers for a window. ``traits`` is
        reserved under ``profile.``: it never reads an attribute of that name."""
        parts = node.parts
        if len(parts) != 2 or parts[1] not in self.traits:
            name = ".".join(parts[1:])
            hint = did_you_mean_trait(name, self.traits)
            self.error(
                node.start, f"unknown trait {name!r}{hint}; traits are defined under traits:"
            )
            return _nothing, ANY, None
        agg = self.traits[parts[1]]
        self.aggregates.setdefault(agg.key, agg)

        def get_value(ctx: Any) -> list[Any]:
            value = ctx.aggregate(agg)
            if value is None:
                return []
            return list(value) if isinstance(value, list) else [value]

        if agg.func != "last":  # a single number or bool: the aggregate's own comparisons
            self.aggregate_of[get_value] = agg
        if agg.func == "exists":
            return get_value, RESULT_TYPES["exists"], lambda ctx: bool(ctx.aggregate(agg))
        return get_value, RESULT_TYPES.get(agg.func, ANY), None

    def call(self, node: Call) -> tuple[Getter, frozenset[str], Predicate | None]:
        name = node.name
        args, problems = bind_arguments(node)
        for pos, message in problems:
            self.error(pos, message)
        failed: tuple[Getter, frozenset[str], Predicate | None] = (
            _nothing,
            RESULT_TYPES.get(name, ANY),
            None,
        )
        if args is None:
            return failed
        positional, kwargs = args.positional, args.keywords
        within_ms = None
        if "within" in kwargs:
            within_ms = self.duration(kwargs["within"])
        if name == "in_segment":
            return self.in_segment(positional[0])
        # After a bad duration the filters are still checked, so that every error is reported.
        if name == "absent":
            result = self.absent(positional[0], kwargs["after"].value, within_ms or 1)
        else:
            result = self.aggregate(node, positional, within_ms)
        if "within" in kwargs and within_ms is None:
            return failed
        return result

    def duration(self, kwarg: Kwarg) -> int | None:
        ms, problem = parse_within(kwarg)
        if problem is not None:
            self.error(*problem)
        return ms

    def filter(self, node: Expr) -> tuple[Check, frozenset[str]]:
        self.fields = set()
        check = self.expr(node, "filter")
        return check, frozenset(self.fields)

    def aggregate(
        self, node: Call, positional: Sequence[Expr], within_ms: int | None
    ) -> tuple[Getter, frozenset[str], Predicate | None]:
        func = cast(Literal["exists", "count", "sum", "min", "max", "last"], node.name)
        types = RESULT_TYPES[func]
        values: Callable[[Mapping[str, Any]], list[Any]] | None = None
        value_fields: frozenset[str] = frozenset()
        filter_node = positional[-1]
        rendered = [render(filter_node)]
        if func not in ("exists", "count"):
            first = positional[0]
            if not (
                isinstance(first, Bare)
                and isinstance(first.value, Path)
                and first.value.root == "event"
            ):
                self.error(first.start, f"the first argument of {func}() must be an event.<path>")
                return _nothing, types, None
            value_path = first.value
            value_fields = frozenset((".".join(value_path.parts),))
            get = event_getter(value_path.parts)
            values = get if func == "last" else numbers_of(get)
            rendered.insert(0, render_value(value_path))
        check, fields = self.filter(filter_node)
        kwargs = {} if within_ms is None else {"within": f'"{format_duration(within_ms)}"'}
        canonical = canonical_call(func, rendered, kwargs)
        agg = self.agg_cache.get(canonical)
        if agg is None:
            agg = Aggregate(
                key=call_key(func, canonical),
                func=func,
                matches=check.fn,
                values=values,
                within_ms=within_ms,
                event_types=filter_event_types(filter_node),
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
        self, missing_node: Expr, after_node: Expr, within_ms: int
    ) -> tuple[Getter, frozenset[str], Predicate | None]:
        missing, missing_fields = self.filter(missing_node)
        after, after_fields = self.filter(after_node)
        canonical = canonical_call(
            "absent",
            [render(missing_node)],
            {"after": render(after_node), "within": f'"{format_duration(within_ms)}"'},
        )
        absent = self.absent_cache.get(canonical)
        if absent is None:
            missing_types = filter_event_types(missing_node)
            after_types = filter_event_types(after_node)
            absent = Absent(
                key=call_key("absent", canonical),
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

    def in_segment(self, arg: Expr) -> tuple[Getter, frozenset[str], Predicate | None]:
        types = frozenset("b")
        ref, problem = referenced_segment(arg, self.known)
        if ref is None:
            if problem is not None:
                self.error(*problem)
            return _nothing, types, None
        self.refs.setdefault(ref, arg.start)
        return (
            (lambda ctx: [bool(ctx.in_segment(ref))]),
            types,
            (lambda ctx: bool(ctx.in_segment(ref))),
        )


def did_you_mean_trait(name: str, traits: Mapping[str, Aggregate]) -> str:
    close = difflib.get_close_matches(name, list(traits), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
