"""Traits (`traits:`): aggregate calls kept per profile like rule inputs, read at `now`, usable
in rules as `profile.traits.NAME`, rebuilt from history when added, and checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings
from flows.cli import main as cdp
from operators import queries
from operators.engine import Engine, build_index
from operators.rules import RuleErrors, compile_rules, compile_traits
from operators.segments import trait_values
from operators.steps.profiles import profile_key
from operators.steps.timers import PREFIX as TIMERS
from operators.store import MemoryStore, Store, Txn
from schemas.records import Identity, Record
from tests.unit.steps.helpers import MIN, Feed, H, audience, ev
from tests.unit.steps.helpers import settings as make_settings

BASE = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
"""
TRAITS = """\
traits:
  - {name: spent, value: 'sum(event.amount, event.eventType == "buy")'}
  - {name: recent_views, value: 'count(event.eventType == "view", within="1h")'}
  - {name: last_item, value: 'last(event.item, event.eventType == "buy")'}
  - {name: bought, value: 'exists(event.eventType == "buy")'}
"""
D1: Identity = ("ECID", "d1")


def buy(feed: Feed, eid: str, ts: int, amount: int, item: str = "shirt") -> Record:
    return feed("web", {**ev(eid, "buy", ts, "d1"), "amount": amount, "item": item})


def stored(store: Store, canonical: Identity, shards: int) -> dict[str, object]:
    held = Txn(store).get_json(profile_key(canonical, shards))
    assert held is not None
    return held  # type: ignore[no-any-return]


def test_trait_values_are_kept_per_event_and_windowed_ones_read_at_now() -> None:
    config = make_settings(BASE + TRAITS)
    store = MemoryStore()
    engine, feed = Engine(config, store), Feed(config)
    engine.process(
        0,
        [
            buy(feed, "b1", 1 * MIN, 100, "shirt"),
            feed("web", ev("v1", "view", 2 * MIN, "d1")),
            feed("web", ev("v2", "view", 3 * MIN, "d1")),
            buy(feed, "b2", 4 * MIN, 50, "socks"),
        ],
        0,
    )
    profile = stored(store, D1, config.shards)
    index = engine.index
    assert trait_values(profile, index, 5 * MIN) == {
        "spent": 150,
        "recent_views": 2,
        "last_item": "socks",
        "bought": True,
    }
    # An hour after the second view both have left the window; no rule reads it: no timer.
    assert trait_values(profile, index, 3 * MIN + H)["recent_views"] == 0
    assert list(store.scan(TIMERS)) == []
    # A profile with no event: every trait at its initial value.
    empty = trait_values({"aggs": {}}, index, 0)
    assert empty == {"spent": 0, "recent_views": 0, "last_item": None, "bought": False}


def test_cdp_profile_documents_carry_traits_at_the_given_time() -> None:
    config = make_settings(BASE + TRAITS)
    store = MemoryStore()
    engine, feed = Engine(config, store), Feed(config)
    engine.process(0, [buy(feed, "b1", 1 * MIN, 100)], 0)
    index = build_index(config)
    doc = queries.find_profile(store, config.shards, D1, (index, 2 * MIN))
    assert doc is not None and doc["traits"]["spent"] == 100
    assert doc["traits"]["last_item"] == "shirt"
    # Without traits configured the document is as before (no key).
    plain = queries.find_profile(store, config.shards, D1)
    assert plain is not None and "traits" not in plain


def test_a_rule_reads_a_trait_and_is_evaluated_when_its_input_changes() -> None:
    config = make_settings(
        BASE
        + TRAITS
        + "segments:\n  - {id: big, rule: 'profile.traits.spent > 120'}\n"
        + "  - {id: browsing, rule: 'profile.traits.recent_views >= 2'}\n"
    )
    store = MemoryStore()
    engine, feed = Engine(config, store), Feed(config)
    out = engine.process(0, [buy(feed, "b1", 1 * MIN, 100), buy(feed, "b2", 2 * MIN, 50)], 0)
    assert [(c.segment_id, c.status) for c in audience(out)] == [("big", "entered")]
    out = engine.process(
        0,
        [
            feed("web", ev("v1", "view", 3 * MIN, "d1")),
            feed("web", ev("v2", "view", 4 * MIN, "d1")),
        ],
        0,
    )
    assert [(c.segment_id, c.status) for c in audience(out)] == [("browsing", "entered")]
    # A rule reads the windowed trait: it has a timer, and exits when the views leave.
    assert list(store.scan(TIMERS)) != []
    out = engine.finish(0, 0)  # nothing later: no timer fires yet
    out = engine.process(0, [feed("web", ev("x1", "other", 3 * MIN + 2 * H, "d2"))], 0)
    exits = [(c.segment_id, c.status, c.reason) for c in audience(out)]
    assert ("browsing", "exited", "timer") in exits


def test_a_rule_and_a_trait_writing_the_same_call_share_one_input() -> None:
    traits = compile_traits([("spent", 'sum(event.amount, event.eventType == "buy")')])
    (rule,) = compile_rules(
        [("s", "sum(event.amount, event.eventType == 'buy') > 1 and profile.traits.spent > 1")],
        traits,
    )
    assert [a.key for a in rule.aggregates] == [traits["spent"].key]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('profile.tier == "x"', "must be one aggregate call"),
        ('absent(event.eventType == "a", after=event.eventType == "b", within="1d")', "aggregate"),
        ("sum(event.amount, event.eventType == ", "column"),
        ('count(event.eventType == "a", within="1x")', "column"),
    ],
)
def test_a_trait_that_is_not_an_aggregate_call_is_refused(value: str, message: str) -> None:
    with pytest.raises(RuleErrors) as caught:
        compile_traits([("t", value)])
    assert message in str(caught.value) and "trait 't'" in str(caught.value)


def test_an_unknown_trait_in_a_rule_is_refused_with_a_guess() -> None:
    traits = compile_traits([("spent", 'sum(event.amount, event.eventType == "buy")')])
    with pytest.raises(RuleErrors) as caught:
        compile_rules([("s", "profile.traits.spnt > 3")], traits)
    assert "unknown trait 'spnt'" in str(caught.value) and "'spent'" in str(caught.value)


def test_config_checks_name_the_line_of_a_bad_or_duplicate_trait(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        BASE
        + "traits:\n"
        + "  - {name: spent, value: 'sum(event.amount, event.eventType == \"buy\")'}\n"
        + "  - {name: spent, value: 'count(event.eventType == \"buy\")'}\n"
        + "  - {name: tier, value: 'profile.tier'}\n"
    )

    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "line 10" in "\n".join(caught.value.problems)
    assert "aggregate call" in "\n".join(caught.value.problems)
    path.write_text(path.read_text().rsplit("  - {name: tier", 1)[0])
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "line 9" in "\n".join(caught.value.problems)
    assert "defined twice" in "\n".join(caught.value.problems)


def test_a_trait_added_later_is_rebuilt_from_history() -> None:
    history = ""  # the default keeps 90 days of events
    before = make_settings(BASE + history)
    store = MemoryStore()
    engine, feed = Engine(before, store), Feed(before)
    engine.process(0, [buy(feed, "b1", 1 * MIN, 100), buy(feed, "b2", 2 * MIN, 30)], 0)
    after = make_settings(
        BASE + history + TRAITS + "segments:\n  - {id: big, rule: 'profile.traits.spent > 120'}\n"
    )
    engine = Engine(after, store)
    assert engine.rolling(None)
    out = []
    while engine.rolling(None):
        out += engine.roll(0, None, 0)
    assert [(c.segment_id, c.status, c.reason) for c in audience(out)] == [
        ("big", "entered", "definition")
    ]
    values = trait_values(stored(store, D1, after.shards), engine.index, 3 * MIN)
    assert values["spent"] == 130 and values["last_item"] == "shirt" and values["bought"]


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("{name: p, kind: profiles}", "needs 'topic' or 'path'"),
        ("{name: p, kind: profiles, topic: t, path: p.jsonl}", "needs 'topic' or 'path'"),
        ("{name: p, kind: profiles, topic: t, segments: [x]}", "takes no url, segments"),
    ],
)
def test_a_profiles_destination_writes_to_a_topic_or_a_file(destination: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(BASE + f"destinations:\n  - {destination}\n")
    assert message in "\n".join(caught.value.problems)


def test_segments_check_names_the_line_of_a_bad_trait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        BASE
        + "traits:\n  - {name: spent, value: 'sum(event.amount, event.eventType = \"buy\")'}\n"
        + "segments:\n  - {id: s, rule: 'profile.traits.spend > 1'}\n"
    )
    assert cdp(["segments", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 8: trait 'spent', column" in err
    assert "line 10: segment 's'" in err and "unknown trait 'spend'" in err
