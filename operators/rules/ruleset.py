"""A whole rule set: every segment parsed and compiled, then checked together.

What only the set can tell: duplicate segment ids, and ``in_segment`` cycles (a segment that
depends on itself has no well-defined membership). The result is ordered so that a segment
comes after every segment it refers to, which lets the engine evaluate them in one pass.
Errors from every segment are gathered and raised once, sorted by segment then column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from operators.rules.compile import Caches, RuleCompiler
from operators.rules.compiled import Aggregate, CompiledRule
from operators.rules.errors import JourneyError, RuleError, RuleErrors, TraitError
from operators.rules.nodes import Bare, Call, render
from operators.rules.parse import SyntaxProblem, parse_rule


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


def compile_rules(
    segments: Sequence[tuple[str, str]], traits: Mapping[str, Aggregate] | None = None
) -> tuple[CompiledRule, ...]:
    """Compile ``(segment_id, rule_text)`` pairs. The result lists every segment after the
    segments it refers to with ``in_segment``. ``traits`` (``compile_traits``) are what
    ``profile.traits.NAME`` reads. Raises RuleErrors with every problem found."""
    items = list(segments)
    errors: list[RuleError] = []
    position: dict[str, int] = {}
    for sid, _ in items:
        if sid in position:
            errors.append(RuleError(sid, 1, "duplicate segment id"))
        else:
            position[sid] = len(position)
    known = frozenset(position)
    traits = traits or {}
    # A rule writing a trait's call reads the trait's state (one key, one piece of state).
    caches: Caches = ({a.text: a for a in traits.values()}, {})
    compiled: dict[str, CompiledRule] = {}
    edges: dict[str, list[str]] = {}
    ref_pos: dict[str, dict[str, int]] = {}
    done: set[str] = set()
    for sid, text in items:
        if sid in done:
            continue
        done.add(sid)
        try:
            tree = parse_rule(text)
        except SyntaxProblem as problem:
            errors.append(RuleError(sid, problem.pos + 1, problem.message))
            continue
        compiler = RuleCompiler(sid, text, known, caches, traits)
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


AGGREGATE_CALLS = ("exists", "count", "sum", "min", "max", "last")


def compile_traits(traits: Sequence[tuple[str, str]]) -> dict[str, Aggregate]:
    """Compile ``(name, value)`` pairs, each value one aggregate call of the rule language;
    name -> its Aggregate, in the order given. Raises RuleErrors (``TraitError``s) with every
    problem found."""
    errors: list[RuleError] = []
    caches: Caches = ({}, {})
    out: dict[str, Aggregate] = {}
    for name, text in traits:
        if name in out:
            errors.append(TraitError(name, 1, "duplicate trait name"))
            continue
        try:
            tree = parse_rule(text)
        except SyntaxProblem as problem:
            errors.append(TraitError(name, problem.pos + 1, problem.message))
            continue
        call = tree.value if isinstance(tree, Bare) else None
        if not isinstance(call, Call) or call.name not in AGGREGATE_CALLS:
            errors.append(
                TraitError(
                    name,
                    tree.start + 1,
                    "a trait's value must be one aggregate call: "
                    + ", ".join(f"{f}(...)" for f in AGGREGATE_CALLS),
                )
            )
            continue
        compiler = RuleCompiler(name, text, frozenset(), caches)
        compiler.value(call, "profile")
        if compiler.errors:
            errors.extend(TraitError(name, e.column, e.message) for e in compiler.errors)
            continue
        (out[name],) = compiler.aggregates.values()
    if errors:
        raise RuleErrors(errors)
    return out


def compile_condition(
    name: str,
    text: str,
    segments: Sequence[str],
    traits: Mapping[str, Aggregate] | None = None,
) -> CompiledRule:
    """One rule that is not a segment (a journey's `exit_when` or `if`), over the segments
    `segments` names and `traits`; evaluated on demand, never a membership. `absent(...)` is
    refused: its state needs a timer, which only segments have (write it as a segment and
    read it with in_segment). Raises RuleErrors (`JourneyError`s named `name`)."""
    try:
        tree = parse_rule(text)
    except SyntaxProblem as problem:
        raise RuleErrors([JourneyError(name, problem.pos + 1, problem.message)]) from None
    compiler = RuleCompiler(name, text, frozenset(segments), ({}, {}), traits or {})
    root = compiler.expr(tree, "profile")
    errors = [JourneyError(name, e.column, e.message) for e in compiler.errors]
    if compiler.absents and not errors:
        errors.append(
            JourneyError(
                name,
                1,
                "absent(...) is not supported here: define it as a segment and read it with"
                " in_segment(...)",
            )
        )
    if errors:
        raise RuleErrors(errors)
    return CompiledRule(
        segment_id=name,
        text=text,
        aggregates=tuple(compiler.aggregates.values()),
        absents=(),
        profile_paths=frozenset(compiler.profile_paths),
        segment_refs=frozenset(compiler.refs),
        evaluate=root.fn,
        _root=root,
    )


def compile_event_condition(name: str, text: str) -> Aggregate:
    """An event condition, written as inside `exists(...)` (a journey's event trigger): the
    aggregate whose `matches` takes an event body, and whose `event_types` pre-filter it."""
    wrapped = f"exists({text})"
    try:
        (agg,) = compile_traits([(name, wrapped)]).values()
    except RuleErrors as exc:
        raise RuleErrors(
            JourneyError(name, max(1, e.column - len("exists(")), e.message) for e in exc.errors
        ) from None
    return agg


def definition_hash(rule: CompiledRule) -> str:
    """What a segment's members depend on, as a short hash: the rule in its canonical spelling
    (spacing and quotes do not count) and the inputs it reads. Two definitions with one hash
    have the same members; a changed hash means the segment must be evaluated again."""
    reads = sorted([a.key for a in rule.aggregates] + [a.key for a in rule.absents])
    text = "\n".join([render(parse_rule(rule.text)), *reads])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
