"""The rule language: parsing, semantics, compile errors, ordering, explain and derivations."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from operators.absent import absent_add, absent_init, absent_value
from operators.aggregates import agg_add, agg_init, agg_value
from operators.rules import (
    Absent,
    Aggregate,
    CompiledRule,
    RuleError,
    RuleErrors,
    compile_rules,
    event_values,
    parse_duration,
)

H = 3_600_000
D = 24 * H


@dataclass
class Ctx:
    """An EvalContext over a profile dict and a list of (ts, event), like the engine's."""

    profile: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[tuple[int, Mapping[str, Any]]] = ()
    now_ms: int = 0
    segments: Mapping[str, bool] = field(default_factory=dict)

    def profile_values(self, path: str) -> list[Any]:
        return event_values(self.profile, path)

    def aggregate(self, agg: Aggregate) -> Any:
        state = agg_init(agg)
        for ts, event in self.events:
            if agg.matches(event):
                state = agg_add(state, agg, ts, event)
        return agg_value(state, agg, self.now_ms)

    def absent(self, a: Absent) -> bool:
        state = absent_init(a)
        for ts, event in self.events:
            if a.after(event) or a.missing(event):
                state = absent_add(state, a, ts, event)
        return absent_value(state, a, self.now_ms)

    def in_segment(self, segment_id: str) -> bool:
        return self.segments.get(segment_id, False)


def rule(text: str, *others: tuple[str, str]) -> CompiledRule:
    rules = compile_rules([("s", text), *others])
    return next(r for r in rules if r.segment_id == "s")


def holds(text: str, profile: Mapping[str, Any] | None = None, **kw: Any) -> bool:
    return rule(text).evaluate(Ctx(profile or {}, **kw))


def errors(*segments: tuple[str, str]) -> list[tuple[str, int, str]]:
    with pytest.raises(RuleErrors) as info:
        compile_rules(list(segments))
    return [(e.segment_id, e.column, e.message) for e in info.value.errors]


def one_error(text: str) -> tuple[int, str]:
    found = errors(("s", text))
    assert len(found) == 1, found
    return found[0][1], found[0][2]


def col(text: str, part: str) -> int:
    return text.index(part) + 1


def ev(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"eventType": event_type, "timestamp": 0, **fields}


# ------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("30m", 1_800_000),
        ("1h", H),
        ("7d", 7 * D),
        ("2w", 14 * D),
        ("1h30m", H + 1_800_000),
        ("1d12h", D + 12 * H),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    "text", ["", "1", "h", "1x", "0s", "0d0h", "1.5h", "-1h", " 1h", "1h ", "1m1h", "1h1h", "1 h"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


# -------------------------------------------------------------------------- paths


def test_event_values_flattens_lists_at_each_step() -> None:
    event = {
        "productListItems": [{"SKU": "a"}, {"SKU": "b"}, {"other": 1}, {"SKU": None}],
        "tags": ["x", ["y", None, ["z"]]],
        "n": 0,
        "nothing": None,
        "deep": {"a": [{"b": [{"c": 1}, {"c": [2, 3]}]}]},
    }
    assert event_values(event, "productListItems.SKU") == ["a", "b"]
    assert event_values(event, "tags") == ["x", "y", "z"]
    assert event_values(event, "n") == [0]
    assert event_values(event, "nothing") == []
    assert event_values(event, "missing.x") == []
    assert event_values(event, "n.x") == []
    assert event_values(event, "deep.a.b.c") == [1, 2, 3]
    assert event_values(event, "deep.a") == [{"b": [{"c": 1}, {"c": [2, 3]}]}]


# ------------------------------------------------------------------------ literals


@pytest.mark.parametrize(
    ("text", "profile", "expected"),
    [
        ('profile.s == "gold"', {"s": "gold"}, True),
        ("profile.s == 'gold'", {"s": "gold"}, True),
        (r'profile.s == "a\"b"', {"s": 'a"b'}, True),
        (r"profile.s == 'it\'s'", {"s": "it's"}, True),
        (r'profile.s == "tab\there\u00e9"', {"s": "tab\there\u00e9"}, True),
        (r'profile.s == "back\\slash"', {"s": "back\\slash"}, True),
        ("profile.n == 3", {"n": 3}, True),
        ("profile.n == 3", {"n": 3.0}, True),
        ("profile.n == -2.5", {"n": -2.5}, True),
        ("profile.n == 1e3", {"n": 1000}, True),
        ("profile.n == .5", {"n": 0.5}, True),
        ("profile.b == true", {"b": True}, True),
        ("profile.b == false", {"b": False}, True),
        ("profile.b == false", {"b": True}, False),
        ("profile.n in [1, 2, 3]", {"n": 2}, True),
        ("profile.n in [1, 2, 3]", {"n": 4}, False),
        ('profile.s in ["a", "b"]', {"s": "b"}, True),
        ('profile.s in ["a", 1, true]', {"s": "b"}, False),
        ("profile.s in []", {"s": "b"}, False),
        ("true", {}, True),
        ("false", {}, False),
    ],
)
def test_literals(text: str, profile: dict[str, Any], expected: bool) -> None:
    assert holds(text, profile) is expected


# ---------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("profile.age == 30", True),
        ("profile.age != 30", False),
        ("profile.age != 31", True),
        ("profile.age < 31", True),
        ("profile.age <= 30", True),
        ("profile.age > 30", False),
        ("profile.age >= 30", True),
        ('profile.name < "b"', True),
        ('profile.name >= "alice"', True),
        ('profile.name contains "lic"', True),
        ('profile.name contains "bob"', False),
        ('profile.name startswith "al"', True),
        ('profile.name startswith "li"', False),
        ('profile.tags contains "vip"', True),
        ('profile.tags contains "v"', True),  # flattened: "vip" contains "v"
        ("profile.scores contains 2", True),
        ("profile.scores contains 5", False),
        ('profile.tags startswith "ne"', True),
        ('"vip" in profile.tags', True),
        ("profile.age in profile.scores", False),
        ("2 in profile.scores", True),
        # any value through a list passes
        ('profile.orders.sku == "b"', True),
        ('profile.orders.sku != "a"', True),
        ("profile.orders.qty > 4", True),
        ("profile.orders.qty > 5", False),
        # incompatible kinds are false, never an error
        ('profile.age < "x"', False),
        ('profile.age == "30"', False),
        ('profile.age != "30"', False),
        ("profile.flag == 1", False),
        ("profile.flag == true", True),
        ("profile.age contains 3", False),
        ("profile.flag < 2", False),
        ("profile.obj == 1", False),
    ],
)
def test_operators(text: str, expected: bool) -> None:
    profile = {
        "age": 30,
        "name": "alice",
        "tags": ["vip", "new"],
        "scores": [1, 2, 3],
        "flag": True,
        "obj": {"a": 1},
        "orders": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 5}],
    }
    assert holds(text, profile) is expected


# -------------------------------------------------------------------------- nulls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('profile.missing == "x"', False),
        ('profile.missing != "x"', False),
        ("profile.missing < 3", False),
        ("profile.missing >= 3", False),
        ("profile.missing in [1, 2]", False),
        ('profile.missing contains "x"', False),
        ('profile.missing startswith "x"', False),
        ("profile.missing == null", True),
        ("profile.missing != null", False),
        ("null == profile.missing", True),
        ("profile.nulled == null", True),  # JSON null is the same as missing
        ('profile.nulled != "x"', False),
        ("profile.empty == null", True),  # an empty list has no value
        ("profile.present == null", False),
        ("profile.present != null", True),
        ("profile.zero == null", False),  # falsy values are values
        ("null == null", True),
        ("null != null", False),
        ('not profile.missing == "x"', True),
    ],
)
def test_nulls(text: str, expected: bool) -> None:
    profile: dict[str, Any] = {"nulled": None, "empty": [], "present": "y", "zero": 0}
    assert holds(text, profile) is expected


# ---------------------------------------------------------------- boolean structure


@pytest.mark.parametrize("a", [False, True])
@pytest.mark.parametrize("b", [False, True])
@pytest.mark.parametrize("c", [False, True])
def test_precedence_not_and_or(a: bool, b: bool, c: bool) -> None:
    profile = {"a": a, "b": b, "c": c}
    t = {k: f"profile.{k} == true" for k in "abc"}
    assert holds(f"not {t['a']} and {t['b']} or {t['c']}", profile) is (((not a) and b) or c)
    assert holds(f"{t['a']} or {t['b']} and {t['c']}", profile) is (a or (b and c))
    assert holds(f"not ({t['a']} or {t['b']}) and {t['c']}", profile) is ((not (a or b)) and c)
    assert holds(f"({t['a']} or {t['b']}) and not not {t['c']}", profile) is ((a or b) and c)
    assert holds(f"{t['a']} and {t['b']} and {t['c']} or {t['a']}", profile) is (
        (a and b and c) or a
    )


def test_keywords_are_fine_inside_paths() -> None:
    assert holds("profile.in.and == 1 and profile.not == null", {"in": {"and": 1}})


# ---------------------------------------------------------------------- aggregates


def test_aggregates_over_events() -> None:
    now = 10 * D
    events = [
        (now - 3 * D, ev("commerce.purchases", price=10, sku="a")),
        (now - 2 * H, ev("commerce.purchases", price=2.5, sku="b")),
        (now - H, ev("web.pageView", price=100)),
        (now - 30 * D, ev("commerce.purchases", price="oops", sku="c")),
        (now - 20 * D, ev("commerce.purchases", price=True, sku="d")),
    ]
    p = '(event.eventType == "commerce.purchases"'

    def check(text: str) -> bool:
        return holds(text, events=events, now_ms=now)

    assert check(f"exists{p})")
    assert check(f'exists{p}, within="1d")')
    assert not check('exists(event.eventType == "nope")')
    assert check(f"count{p}) == 4")
    assert check(f'count{p}, within="1d") == 1')
    assert check(f'count{p}, within="4d") == 2')
    assert check('count(event.eventType == "nope", within="4d") == 0')
    assert check(f"sum(event.price, {p[1:]}) == 12.5")  # "oops" and true are not numbers
    assert check(f'sum(event.price, {p[1:]}, within="1d") == 2.5')
    assert check('sum(event.price, event.eventType == "nope") == 0')
    assert check(f"min(event.price, {p[1:]}) == 2.5")
    assert check(f"max(event.price, {p[1:]}) == 10")
    assert check('max(event.price, event.eventType == "nope") == null')
    assert check(f'last(event.sku, {p[1:]}) == "b"')
    assert check(f'last(event.sku, {p[1:]}, within="1h") == null')
    assert check("last(event.price, true) == 100")
    assert check(f'last(event.price, {p[1:]}, within="40d") == 2.5')
    assert check("count(true) == 5 and count(false) == 0")
    assert check('count(event.sku in ["a", "b"] or event.price > 50) == 3')
    assert check('count(not event.eventType == "web.pageView") == 4')


def test_aggregate_filter_any_match_through_lists() -> None:
    events = [
        (1, ev("commerce.purchases", productListItems=[{"SKU": "a"}, {"SKU": "b"}])),
        (2, ev("commerce.purchases", productListItems=[{"SKU": "c"}])),
        (3, ev("commerce.purchases")),
    ]
    assert holds('count(event.productListItems.SKU == "b") == 1', events=events, now_ms=5)
    assert holds('count(event.productListItems.SKU != "a") == 2', events=events, now_ms=5)
    assert holds("count(event.productListItems.SKU == null) == 1", events=events, now_ms=5)
    assert holds('count(event.productListItems.SKU in ["b", "c"]) == 2', events=events, now_ms=5)


def test_single_key_fast_path_matches_general_semantics() -> None:
    agg = rule('exists(event.eventType == "x")').aggregates[0]
    assert agg.matches({"eventType": "x"})
    assert not agg.matches({"eventType": "y"})
    assert agg.matches({"eventType": ["y", "x"]})
    assert not agg.matches({"eventType": None})
    assert not agg.matches({})
    agg = rule('exists(event.eventType in ["a", "b"])').aggregates[0]
    assert agg.matches({"eventType": "b"})
    assert agg.matches({"eventType": [["c"], "a"]})
    assert not agg.matches({"eventType": "c"})
    agg = rule("exists(event.n in [1, 2])").aggregates[0]
    assert agg.matches({"n": 2.0})
    assert not agg.matches({"n": True})


def test_absent() -> None:
    text = (
        'absent(event.eventType == "commerce.purchases", '
        'after=event.eventType == "commerce.productListAdds", within="1h")'
    )
    cart, buy = ev("commerce.productListAdds"), ev("commerce.purchases")
    r = rule(text)
    assert len(r.absents) == 1
    assert not r.evaluate(Ctx(events=[], now_ms=10 * H))  # never an A
    assert r.evaluate(Ctx(events=[(0, cart)], now_ms=H))  # exactly D old
    assert not r.evaluate(Ctx(events=[(0, cart)], now_ms=H - 1))
    assert not r.evaluate(Ctx(events=[(0, cart), (H, buy)], now_ms=2 * H))  # B at tA + D
    assert r.evaluate(Ctx(events=[(0, cart), (H + 1, buy)], now_ms=2 * H))  # too late
    assert r.evaluate(Ctx(events=[(0, cart), (0, buy)], now_ms=2 * H))  # not after A
    # the latest A counts: a new cart restarts the wait
    assert not r.evaluate(Ctx(events=[(0, cart), (H, cart)], now_ms=H + 1))
    assert r.evaluate(Ctx(events=[(0, cart), (10, buy), (H, cart)], now_ms=2 * H))
    assert holds(f"not {text}", events=[(0, cart), (1, buy)], now_ms=2 * H)


def test_in_segment() -> None:
    rules = compile_rules([("vip", "profile.v == true"), ("s", 'in_segment("vip")')])
    s = next(r for r in rules if r.segment_id == "s")
    assert s.segment_refs == frozenset({"vip"})
    assert s.evaluate(Ctx(segments={"vip": True}))
    assert not s.evaluate(Ctx(segments={"vip": False}))


def test_bool_calls_compare_with_booleans() -> None:
    events = [(1, ev("x"))]
    assert holds('exists(event.eventType == "x") == true', events=events, now_ms=2)
    assert holds('exists(event.eventType == "y") == false', events=events, now_ms=2)
    assert holds('exists(event.eventType == "y") != true', events=events, now_ms=2)


# ------------------------------------------------------------------ compile errors


@pytest.mark.parametrize(
    ("text", "at", "message"),
    [
        ('profile.x == "a" and', None, "unexpected end of rule"),
        ("profile.x ==", None, "unexpected end of rule"),
        ("profile.x = 3", "=", "unexpected '='"),
        ("(profile.x == 1", None, "unexpected end of rule; expected ')'"),
        ("profile.x == 1)", ")", "unexpected ')'"),
        ('profile.x == "abc', '"abc', "unterminated string"),
        ("profile.x == 1 # 2", "#", "unexpected '#'"),
        ("profile.x == 1 profile.y == 2", "profile.y", "unexpected 'profile.y'"),
        ("", None, "empty rule"),
        ("   ", None, "empty rule"),
        (r'profile.x == "\q"', "\\q", "bad escape"),
        ("profile.x in [[1]]", "[1]", "lists inside lists"),
    ],
)
def test_syntax_errors(text: str, at: str | None, message: str) -> None:
    column, found = one_error(text)
    assert message in found
    if at is not None:
        assert column == col(text, at)
    elif text.strip():
        assert column == len(text) + 1
    else:
        assert column == 1


@pytest.mark.parametrize(
    ("text", "at", "message"),
    [
        # unknown functions and names
        ("profile.x == 1 and fresh(event.a == 1)", "fresh", "unknown function 'fresh'"),
        ("foo == 1", "foo", "unknown name 'foo'"),
        ("profile == 1", "profile", "profile needs a field"),
        ("customer.x == 1", "customer.x", "unknown name 'customer.x'"),
        # wrong arguments
        ("exists()", "exists", "wrong arguments"),
        ("count(event.a == 1, event.b == 2)", "count", "wrong arguments"),
        ("sum(event.a == 1) > 0", "sum", "wrong arguments"),
        ('absent(event.a == 1, within="1h")', "absent", "wrong arguments"),
        ("absent(event.a == 1, after=event.b == 1)", "absent", "wrong arguments"),
        ('in_segment("a", "b")', "in_segment", "wrong arguments"),
        ('exists(event.a == 1, since="1d")', "since", "has no argument 'since'"),
        ('exists(event.a == 1, within="1d", within="2d")', 'within="2d"', "twice"),
        ('exists(within="1d", event.a == 1)', "event.a", "positional argument"),
        ("in_segment(1)", "1", "segment id string"),
        # durations
        ('exists(event.a == 1, within="7x")', '"7x"', "bad duration '7x'"),
        ('exists(event.a == 1, within="0d")', '"0d"', "more than zero"),
        ("exists(event.a == 1, within=7)", "7)", "duration string"),
        ('absent(event.a == 1, after=event.b == 1, within="1y")', '"1y"', "bad duration"),
        # aggregate types
        ('count(event.a == 1) > "x"', '"x"', "cannot compare a number with a string"),
        ("exists(event.a == 1) == 3", "3", "cannot compare a boolean with a number"),
        ("count(event.a == 1) == true", "true", "cannot compare a number with a boolean"),
        ("exists(event.a == 1) < 3", "exists", "'<' needs numbers or strings"),
        ('count(event.a == 1) contains "x"', "count", "'contains' needs a string or a path"),
        ('exists(true) contains "x"', "exists", "'contains' needs a string or a path"),
        ("profile.x startswith 3", "3", "'startswith' needs strings, not a number"),
        ('count(event.a == 1) startswith "x"', "count", "'startswith' needs strings"),
        ('count(event.a == 1) in ["a", "b"]', '["a"', "cannot look a number up"),
        ("count(event.a == 1) == null", "null", "never null"),
        ("sum(event.v, true) != null", "null", "never null"),
        ('in_segment("o") == 1', "1", "cannot compare a boolean with a number"),
        ('min(event.v, true) == "x"', '"x"', "cannot compare a number or null with a string"),
        ('"a" < 1', "1", "cannot compare a string with a number"),
        # nulls and lists in the wrong place
        ("profile.x < null", "null", "null can only be compared with == or !="),
        ("profile.x contains null", "null", "null can only be compared"),
        ("profile.x == [1, 2]", "[1", "only allowed on the right of 'in'"),
        ("[1] in profile.x", "[1]", "only allowed on the right of 'in'"),
        ('profile.x in "abc"', '"abc"', "list literal or a path"),
        ("profile.x in count(true)", "count", "list literal or a path"),
        ("profile.x in [1, null]", "[1", "null in a list"),
        # conditions
        ("profile.x", "profile.x", "is not a condition"),
        ("count(event.a == 1)", "count", "count(...) is a number, not a condition"),
        ("last(event.a, true)", "last", "not a condition"),
        ("3", "3", "expected a condition"),
        ('exists(event.a == 1) and "x"', '"x"', "expected a condition"),
        ("exists(event.a)", "event.a", "event.a is not a condition"),
        # first argument of sum/min/max/last
        ("sum(profile.v, true) > 1", "profile.v", "must be an event.<path>"),
        ("max(1, true) > 1", "1, true", "must be an event.<path>"),
        ("last(event.v == 1, true) == 1", "event.v", "must be an event.<path>"),
        # event and profile paths in the wrong place
        ('event.eventType == "x"', "event.eventType", "only allowed inside an aggregate call"),
        ("exists(profile.x == 1)", "profile.x", "profile paths are not allowed inside"),
        ("exists(event.a == count(true))", "count", "calls are not allowed inside an event"),
        ('exists(in_segment("o"))', "in_segment", "calls are not allowed inside an event"),
        ('absent(event.a == 1, after=profile.b == 1, within="1h")', "profile.b", "profile paths"),
        # segments
        ('in_segment("nope")', '"nope"', "unknown segment 'nope'"),
    ],
)
def test_compile_errors(text: str, at: str, message: str) -> None:
    found = errors(("s", text), ("o", "true"))
    assert len(found) == 1, found
    segment_id, column, got = found[0]
    assert segment_id == "s"
    assert message in got
    assert column == col(text, at)


def test_every_error_in_every_segment_is_reported() -> None:
    text_a = 'count(event.a == 1) > "x" and exists(profile.p == 1, within="3q")'
    found = errors(
        ("good", "profile.x == 1"),
        ("a", text_a),
        ("b", "profile.x =="),
        ("c", 'in_segment("missing") or foo(1)'),
    )
    assert found == [
        ("a", col(text_a, '"x"'), "cannot compare a number with a string"),
        ("a", col(text_a, "profile.p"), found[1][2]),
        ("a", col(text_a, '"3q"'), found[2][2]),
        ("b", 13, found[3][2]),
        ("c", 12, "unknown segment 'missing'"),
        ("c", 26, found[5][2]),
    ]
    assert "profile paths" in found[1][2]
    assert "bad duration" in found[2][2]
    assert "unknown function 'foo'" in found[5][2]


def test_rule_error_text() -> None:
    with pytest.raises(RuleErrors) as info:
        compile_rules([("gold", "profile.x =="), ("silver", "foo == 1")])
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("segment 'gold', column 13: unexpected end of rule")
    assert lines[1] == (
        "segment 'silver', column 1: unknown name 'foo'; paths start with profile. or event."
    )
    error = info.value.errors[1]
    assert isinstance(error, RuleError)
    assert isinstance(error, ValueError)
    assert (error.segment_id, error.column) == ("silver", 1)
    assert str(error) == f"segment 'silver', column 1: {error.message}"
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)


def test_duplicate_segment_id() -> None:
    assert errors(("a", "true"), ("a", "false")) == [("a", 1, "duplicate segment id")]


def test_non_string_rule() -> None:
    found = errors(("a", 3))  # type: ignore[arg-type]
    assert found[0][:2] == ("a", 1)


# ----------------------------------------------------------------- cycles and order


def test_cycles_are_errors() -> None:
    found = errors(
        ("a", 'in_segment("b")'),
        ("b", 'profile.x == 1 and in_segment("a")'),
        ("self", 'profile.x == 1 or in_segment("self")'),
        ("c", 'in_segment("a")'),  # depends on a cycle but is not in one
    )
    assert found == [
        ("a", 12, "in_segment cycle: a → b → a"),
        ("b", 31, "in_segment cycle: b → a → b"),
        ("self", 30, "in_segment cycle: self → self"),
    ]


def test_longer_cycle() -> None:
    found = errors(("a", 'in_segment("b")'), ("b", 'in_segment("c")'), ("c", 'in_segment("a")'))
    assert [m for _, _, m in found] == [
        "in_segment cycle: a → b → c → a",
        "in_segment cycle: b → c → a → b",
        "in_segment cycle: c → a → b → c",
    ]


def test_dependencies_come_first() -> None:
    rules = compile_rules(
        [
            ("top", 'in_segment("mid") and in_segment("base2")'),
            ("solo", "true"),
            ("mid", 'in_segment("base")'),
            ("base", "profile.x == 1"),
            ("base2", "profile.y == 1"),
        ]
    )
    order = [r.segment_id for r in rules]
    assert sorted(order) == ["base", "base2", "mid", "solo", "top"]
    for r in rules:
        for ref in r.segment_refs:
            assert order.index(ref) < order.index(r.segment_id)
    # deterministic: depth-first from each segment in input order, dependencies first
    assert order == ["base", "mid", "base2", "top", "solo"]
    assert [r.segment_id for r in compile_rules([("x", "true"), ("y", "false")])] == ["x", "y"]


def test_empty_rule_set() -> None:
    assert compile_rules([]) == ()


# -------------------------------------------------------------------------- explain


def test_explain() -> None:
    text = (
        'profile.level == "gold" and (count(event.eventType == "x", within="1d") < 3 '
        'or not profile.tags contains "vip")'
    )
    r = rule(text)
    ctx = Ctx(
        {"level": "gold", "tags": ["new", "vip"]},
        events=[(1, ev("x")), (2, ev("x")), (3, ev("y"))],
        now_ms=10,
    )
    lines = r.explain(ctx)
    assert [(line.depth, line.text, line.value, line.detail) for line in lines] == [
        (0, text, True, "true and true"),
        (1, 'profile.level == "gold"', True, '"gold" == "gold"'),
        (
            1,
            'count(event.eventType == "x", within="1d") < 3 or not profile.tags contains "vip"',
            True,
            "true or false",
        ),
        (2, 'count(event.eventType == "x", within="1d") < 3', True, "2 < 3"),
        (2, 'not profile.tags contains "vip"', False, "not true"),
        (3, 'profile.tags contains "vip"', True, '["new", "vip"] contains "vip"'),
    ]
    assert r.evaluate(ctx) is True


def test_explain_nulls_lists_and_calls() -> None:
    r = rule('profile.x == null and profile.y in ["a", "b"] and exists(true)')
    lines = r.explain(Ctx({"y": "b"}, events=[(1, ev("x"))], now_ms=1))
    assert [(line.text, line.value, line.detail) for line in lines[1:]] == [
        ("profile.x == null", True, "null == null"),
        ('profile.y in ["a", "b"]', True, '"b" in ["a", "b"]'),
        ("exists(true)", True, "true"),
    ]


# ---------------------------------------------------------------------- derivations


def test_event_types_and_fields() -> None:
    def agg(call: str) -> Aggregate:
        return rule(f"{call} == {call}" if call.startswith("last") else call).aggregates[0]

    purchases = agg('exists(event.eventType == "commerce.purchases")')
    assert purchases.event_types == frozenset({"commerce.purchases"})
    assert purchases.fields == frozenset({"eventType"})
    assert purchases.func == "exists"
    assert purchases.within_ms is None
    assert purchases.values is None

    both = agg('exists(event.eventType in ["a", "b"] and event.x.y > 1)')
    assert both.event_types == frozenset({"a", "b"})
    assert both.fields == frozenset({"eventType", "x.y"})
    assert agg('exists("a" == event.eventType)').event_types == frozenset({"a"})
    assert agg('exists(event.eventType == "a" or event.eventType == "b")').event_types == (
        frozenset({"a", "b"})
    )
    assert agg(
        'exists(event.eventType in ["a", "b"] and event.eventType == "b")'
    ).event_types == frozenset({"b"})
    assert agg('exists(event.eventType == "a" or event.x == 1)').event_types is None
    assert agg('exists(not event.eventType == "a")').event_types is None
    assert agg('exists(event.eventType != "a")').event_types is None
    assert agg("exists(true)").event_types is None
    assert agg("exists(false)").event_types == frozenset()
    assert agg("exists(true)").fields == frozenset()

    total = rule('sum(event.commerce.order.priceTotal, event.eventType == "p", within="7d") > 1')
    s = total.aggregates[0]
    assert s.func == "sum"
    assert s.within_ms == 7 * D
    assert s.fields == frozenset({"eventType", "commerce.order.priceTotal"})
    assert s.values is not None
    values = s.values({"commerce": {"order": {"priceTotal": [1, 2.5, "x", True, None]}}})
    assert values == [1, 2.5]
    last = rule('last(event.v, true) == "a"').aggregates[0]
    assert last.values is not None
    assert last.values({"v": ["a", True, None, 1]}) == ["a", True, 1]

    absent = rule(
        'absent(event.eventType == "buy", after=event.eventType == "cart" and event.n > 1, '
        'within="30m")'
    ).absents[0]
    assert absent.event_types == frozenset({"buy", "cart"})
    assert absent.fields == frozenset({"eventType", "n"})
    assert absent.within_ms == 30 * 60_000
    assert absent.after({"eventType": "cart", "n": 2})
    assert not absent.after({"eventType": "cart", "n": 1})
    assert absent.missing({"eventType": "buy"})
    partly = rule('absent(event.x == 1, after=event.eventType == "cart", within="1h")').absents[0]
    assert partly.event_types is None


def test_profile_paths_and_refs() -> None:
    r = rule(
        'profile._tmd.loyalty.level == "gold" and profile.a.b != null and in_segment("o")',
        ("o", "profile.z == 1"),
    )
    assert r.profile_paths == frozenset({"_tmd.loyalty.level", "a.b"})
    assert r.segment_refs == frozenset({"o"})
    assert r.aggregates == ()
    assert r.absents == ()


def test_aggregate_keys_are_shared_and_canonical() -> None:
    rules = compile_rules(
        [
            ("a", "count(event.eventType=='x',within='24h') > 1"),
            ("b", 'count( event.eventType == "x" , within = "1d" ) < 5 and count(true) > 0'),
            ("c", 'count(event.eventType == "x", within="2d") > 1'),
            ("d", 'exists(event.eventType == "x", within="1d")'),
        ]
    )
    by_id = {r.segment_id: r for r in rules}
    a, b, c, d = (by_id[k].aggregates[0] for k in "abcd")
    assert a.key == b.key
    assert a is b  # one object, one state
    assert a.text == 'count(event.eventType == "x", within="1d")'
    assert len({a.key, c.key, d.key, by_id["b"].aggregates[1].key}) == 4
    again = compile_rules([("z", 'count(event.eventType == "x", within="1d") > 1')])
    assert again[0].aggregates[0].key == a.key  # stable across compilations


def test_rules_are_compiled_to_closures_not_eval() -> None:
    # A string that would do harm as Python is only ever data here.
    assert not holds("profile.x == \"__import__('os').system('false')\"", {"x": "y"})


# ----------------------------------------------------------- case-insensitive operators


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('profile.name iequals "ALICE"', True),
        ('profile.name iequals "alic"', False),
        ('profile.name icontains "LIC"', True),
        ('profile.name icontains "bob"', False),
        ('profile.name istartswith "Al"', True),
        ('profile.name istartswith "li"', False),
        ('profile.tags iequals "VIP"', True),  # any value through a list
        ('profile.city iequals "strasse"', True),  # case folding: ß is ss
        ("profile.name iequals profile.upper", True),  # path against path
        ('profile.age iequals "30"', False),  # strings only, never a number
        ('profile.missing iequals "x"', False),
        ('profile.name == "ALICE"', False),  # == stays exact
    ],
)
def test_case_insensitive_operators(text: str, expected: bool) -> None:
    profile = {"name": "alice", "upper": "ALICE", "tags": ["vip"], "city": "Straße", "age": 30}
    assert holds(text, profile) is expected


def test_case_insensitive_event_filters_and_aggregates() -> None:
    events = [
        (1, ev("Commerce.Purchases", price=10, note="Gift Wrap")),
        (2, ev("commerce.purchases", price=5)),
        (3, ev("web.pageView")),
    ]

    def check(text: str) -> bool:
        return holds(text, events=events, now_ms=5)

    assert check('count(event.eventType iequals "commerce.purchases") == 2')
    assert check('count(event.eventType == "commerce.purchases") == 1')  # exact by design
    assert check('sum(event.price, event.eventType istartswith "COMMERCE.") == 15')
    assert check('exists(event.note icontains "gift")')
    assert check('last(event.note, true) iequals "gift wrap"')
    agg = rule('exists(event.eventType iequals "x")').aggregates[0]
    assert agg.matches({"eventType": "X"}) and not agg.matches({"eventType": "y"})


@pytest.mark.parametrize("op", ["iequals", "icontains", "istartswith"])
def test_case_insensitive_operators_need_strings(op: str) -> None:
    text = f"profile.x {op} 3"
    assert one_error(text) == (col(text, "3"), f"'{op}' needs strings, not a number")


def test_case_insensitive_operators_explain_and_render() -> None:
    text = 'profile.level iequals "GOLD"'
    r = rule(text)
    assert r.text == text
    (line,) = r.explain(Ctx({"level": "gold"}))
    assert (line.value, line.detail) == (True, '"gold" iequals "GOLD"')
