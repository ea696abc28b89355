"""SegmentIndex's memoised lookups (evaluation plans, attribute readers) and transitions."""

from __future__ import annotations

from operators import profile as prof
from operators.rules import compile_rules
from operators.segments import SegmentIndex, evaluate, transitions

INDEX = SegmentIndex(
    compile_rules(
        [
            ("vip", 'in_segment("gold") and in_segment("buyers")'),
            ("gold", 'profile.loyalty.level == "gold"'),
            ("buyers", 'exists(event.eventType == "buy")'),
            ("mail", 'profile.email contains "example"'),
        ]
    )
)


def test_plan_adds_dependants_in_dependency_order_and_ignores_unknown_ids() -> None:
    assert [sid for sid, _ in INDEX.plan({"buyers", "nope"})] == ["buyers", "vip"]
    assert [sid for sid, _ in INDEX.plan(frozenset({"gold"}))] == ["gold", "vip"]
    assert INDEX.plan(set()) == ()
    assert INDEX.plan({"buyers"}) is INDEX.plan(frozenset({"buyers"}))  # memoised


def test_evaluate_follows_the_plan() -> None:
    profile = {**prof.new_profile(), "attrs": {"loyalty.level": "gold"}}
    assert evaluate(profile, INDEX, {"gold"}, 0) == {"gold": True, "vip": False}
    assert evaluate(profile, INDEX, set(), 0) == {}


def test_affected_by_attributes_returns_a_fresh_set_each_time() -> None:
    first = INDEX.affected_by_attributes(frozenset({"loyalty"}))
    assert first == {"gold"}
    first.add("mangled")
    assert INDEX.affected_by_attributes(["loyalty"]) == {"gold"}
    assert INDEX.affected_by_attributes(frozenset({"loyalty.level.x", "email"})) == {
        "gold",
        "mail",
    }
    assert INDEX.affected_by_attributes(()) == set()


def test_transitions_are_sorted_and_number_each_segment() -> None:
    held = {"b": [True, 5, 1], "c": [False, 6, 2]}
    updated, changes = transitions(held, {"c": True, "a": True, "b": False, "d": False}, 9)
    assert [(t.segment_id, t.entered, t.sequence) for t in changes] == [
        ("a", True, 1),
        ("b", False, 2),
        ("c", True, 3),
    ]
    assert updated == {"b": [False, 9, 2], "c": [True, 9, 3], "a": [True, 9, 1]}
    assert held == {"b": [True, 5, 1], "c": [False, 6, 2]}  # argument untouched
    assert transitions(held, {"b": True}, 9) == (held, [])
