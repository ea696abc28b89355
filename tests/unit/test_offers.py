"""operators.offers: offers compiled from the settings, decided over projection documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError
from operators.offers import compile_offers, decide
from tests.serve_helpers import document, settings_of, write_config


@pytest.fixture
def offers(tmp_path: Path) -> dict[str, object]:
    path = write_config(tmp_path)
    return dict(compile_offers(settings_of(path), path))


def _decide(offers: dict[str, object], placement: str, doc: dict[str, object] | None) -> str | None:
    decision = decide(placement, offers[placement], doc)  # type: ignore[arg-type]
    return None if decision.offer is None else decision.offer.id


def test_offers_are_tried_by_priority_and_the_first_that_holds_wins(
    offers: dict[str, object],
) -> None:
    both = document(
        "p_1", 1, {"ECID": ["e"]}, segments={"asked-for-shirts": "entered", "gold": "entered"}
    )
    assert _decide(offers, "home-hero", both) == "fitness-shirts"  # 10 before gold's 5
    rich = document("p_1", 1, {"ECID": ["e"]}, traits={"lifetime_value": 900.5})
    assert _decide(offers, "home-hero", rich) == "big-spender"  # priority 20, a trait
    exited = document("p_1", 1, {"ECID": ["e"]}, segments={"asked-for-shirts": "exited"})
    assert _decide(offers, "home-hero", exited) == "welcome"


def test_an_unknown_person_gets_what_needs_no_profile(offers: dict[str, object]) -> None:
    assert _decide(offers, "home-hero", None) == "welcome"
    decision = decide("members-only", offers["members-only"], None)  # type: ignore[arg-type]
    assert decision.offer is None and decision.reason == "no offer of this placement is eligible"


def test_reason_names_the_rule(offers: dict[str, object]) -> None:
    doc = document("p_1", 1, {"ECID": ["e"]}, segments={"gold": "entered"})
    decision = decide("home-hero", offers["home-hero"], doc)  # type: ignore[arg-type]
    assert decision.reason == 'rule: in_segment("gold")'
    decision = decide("home-hero", offers["home-hero"], None)  # type: ignore[arg-type]
    assert decision.reason == "no rule: always eligible"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('in_segment("nope")', "unknown segment 'nope'"),
        ("profile.a ==", "column"),
        ('count(event.eventType == "x") > 2', "put the aggregate in a trait"),
    ],
)
def test_an_offer_rule_that_cannot_run_is_refused_at_start_with_its_line(
    tmp_path: Path, rule: str, message: str
) -> None:
    extra = f"""
  - placement: broken
    offers:
      - {{id: fine}}
      - {{id: bad, rule: '{rule}'}}
"""
    path = write_config(tmp_path, extra=extra)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "id: bad" in text)
    with pytest.raises(ConfigError) as caught:
        compile_offers(settings_of(path), path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: line {line}: offers.2.offers.1.rule: ")
    assert message in problem


def test_a_placement_or_offer_defined_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    extra = """
  - placement: home-hero
    offers:
      - {id: a}
      - {id: a}
"""
    path = write_config(tmp_path, extra=extra)
    with pytest.raises(ConfigError) as caught:
        settings_of(path)
    text = str(caught.value)
    assert "offers.2.placement: placement 'home-hero' is defined twice" in text
    assert "offers.2.offers.1.id: offer 'a' is defined twice in placement 'home-hero'" in text


def test_segments_check_reports_a_bad_offer_rule_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import run_cli  # noqa: PLC0415

    extra = """
  - placement: broken
    offers:
      - {id: bad, rule: 'in_segment("gold") and'}
"""
    path = write_config(tmp_path, extra=extra)
    assert run_cli("segments", "check", "--config", path) == 1
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "id: bad" in text)
    assert f"{path}: line {line}: offers.2.offers.0.rule: column" in err
