"""Profiles merge commutatively (issue #3): with several processes a cluster's records may be
applied to several profiles that merge later, in any order. Whatever the split of the records
and the order of the merges, attributes, rule inputs and event counts equal one profile that
applied every record (and rule values, evaluated on both, agree)."""

from __future__ import annotations

from functools import reduce
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators import profile as prof
from operators.rules import compile_rules
from operators.segments import SegmentIndex, evaluate
from schemas.records import Record
from tests.property.streams import attribute, events, record

INDEX = SegmentIndex(
    compile_rules(
        [
            ("buyers", 'exists(event.eventType == "buy")'),
            ("spend", 'sum(event.amount, event.eventType == "buy") > 50'),
            ("recent", 'count(event.eventType == "view", within="10ms") >= 2'),
            ("cheap", 'min(event.amount, event.eventType == "buy", within="20ms") < 10'),
            ("last", 'last(event.page, event.eventType == "view") == "b"'),
            (
                "cart",
                'absent(event.eventType == "buy", after=event.eventType == "add", within="5ms")',
            ),
            ("gold", 'profile.level == "gold"'),
        ]
    )
)

event = events("view", "buy", "add")
items = st.lists(st.one_of(event, attribute), min_size=1, max_size=14)


def apply(profile: prof.Profile, r: Record) -> prof.Profile:
    if r.kind == "event":
        aggs, absents = INDEX.candidates(r.event_type or "")
        return prof.apply_event(profile, r, aggs, absents)[0]
    return prof.apply_attributes(profile, r)[0]


def merge(a: prof.Profile, b: prof.Profile) -> prof.Profile:
    return prof.merge_profiles(a, b, INDEX.aggregates, INDEX.absents)


def comparable(p: prof.Profile) -> tuple[Any, ...]:
    return (p["attrs"], p["meta"], p["events"])


@settings(max_examples=300, deadline=None)
@given(items, st.lists(st.integers(0, 3), min_size=14, max_size=14), st.randoms())
def test_any_split_and_merge_order_equals_one_profile(
    raw: list[tuple[Any, ...]], parts: list[int], rng: Any
) -> None:
    records = [record(i, item) for i, item in enumerate(raw)]
    whole = reduce(apply, records, prof.new_profile())
    pieces = [prof.new_profile() for _ in range(4)]
    for r, part in zip(records, parts, strict=False):
        pieces[part] = apply(pieces[part], r)
    rng.shuffle(pieces)
    merged = reduce(merge, pieces)
    assert comparable(merged) == comparable(whole)
    now = max((r.ts_ms or 0) for r in records)
    for at in (now, now + 3, now + 25):
        assert evaluate(merged, INDEX, INDEX.all_ids(), at) == evaluate(
            whole, INDEX, INDEX.all_ids(), at
        )
