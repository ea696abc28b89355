"""Decisions of `cdp serve` (DESIGN §11): which offer of a placement a profile gets, as pure
functions over the profile projection's document.

An offer's rule is the rule language over what the document holds: `profile.<attribute>`,
`profile.traits.<name>` and `in_segment("id")` (the memberships the worker computed). The
document has no events, so an aggregate or `absent` in an offer rule is refused at start: such
a value belongs in a trait (`traits:`), which the rule then reads as `profile.traits.NAME`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.checks import line_in_file
from config.settings import ConfigError, OfferSettings, Settings
from operators import rules
from operators.rules import (
    Absent,
    Aggregate,
    CompiledRule,
    EvalContext,
    RuleErrors,
    compile_rules,
    event_values,
)

_NO_RULE = "no rule: always eligible"
_TRAITS = "traits."


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    priority: int
    content: Mapping[str, Any]
    rule: str | None
    holds: Any  # Callable[[EvalContext], bool] | None (None: no rule)
    # The aggregate key of each trait a rule reads (`profile.traits.NAME` compiled with the
    # traits) -> the trait's name: its value is the document's `traits.NAME`.
    traits: Mapping[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return _NO_RULE if self.rule is None else f"rule: {self.rule}"


@dataclass(frozen=True, slots=True)
class Decision:
    placement: str
    offer: Offer | None

    @property
    def reason(self) -> str:
        return "no offer of this placement is eligible" if self.offer is None else self.offer.reason


class DocumentContext:
    """The rules' view of one projection document (operators.rules.EvalContext)."""

    __slots__ = ("_attributes", "_segments", "_trait_keys", "_traits", "now_ms")

    def __init__(
        self, document: Mapping[str, Any] | None, trait_keys: Mapping[str, str] | None = None
    ) -> None:
        doc = document or {}
        self.now_ms = 0
        self._trait_keys = trait_keys or {}
        self._attributes: Mapping[str, Any] = doc.get("attributes") or {}
        self._traits: Mapping[str, Any] = doc.get("traits") or {}
        self._segments: Mapping[str, Any] = doc.get("segments") or {}

    def profile_values(self, path: str) -> list[Any]:
        if path.startswith(_TRAITS):
            return event_values(self._traits, path[len(_TRAITS) :])
        return event_values(self._attributes, path)

    def aggregate(self, agg: Aggregate) -> Any:
        """A trait's value, as the worker computed it (any other aggregate is refused at
        start: a document has no events)."""
        name = self._trait_keys.get(agg.key)
        return None if name is None else self._traits.get(name)

    def absent(self, a: Absent) -> bool:
        return False

    def in_segment(self, segment_id: str) -> bool:
        held = self._segments.get(segment_id)
        return isinstance(held, Mapping) and held.get("status") == "entered"


def compile_offers(settings: Settings, config: Path | None = None) -> dict[str, tuple[Offer, ...]]:
    """Each placement's offers, highest priority first (ties keep the file's order). Raises
    ConfigError naming the file's line for a rule that does not compile, reads events, or
    names an unknown segment."""
    keys: dict[str, tuple[int, int]] = {}
    items: list[tuple[str, str]] = [(s.id, s.rule) for s in settings.segments]
    for i, placement in enumerate(settings.offers):
        for j, offer in enumerate(placement.offers):
            if offer.rule is not None:
                key = f"{placement.placement}/{offer.id}"  # '/' is in no segment id
                keys[key] = (i, j)
                items.append((key, offer.rule))
    problems: list[tuple[tuple[str | int, ...], str]] = []
    compiled: dict[str, CompiledRule] = {}
    traits = _traits(settings)
    trait_keys = {agg.key: name for name, agg in traits.items()}
    try:
        for done in _compile(items, traits):
            compiled[done.segment_id] = done
    except RuleErrors as exc:
        for error in exc.errors:
            if error.segment_id not in keys:
                continue  # a segment's own problem: the worker and `segments check` say it
            i, j = keys[error.segment_id]
            loc: tuple[str | int, ...] = ("offers", i, "offers", j, "rule")
            problems.append((loc, f"column {error.column}: {error.message}"))
    for key, (i, j) in keys.items():
        rule = compiled.get(key)
        if rule is None:
            continue
        loc = ("offers", i, "offers", j, "rule")
        if rule.absents or any(a.key not in trait_keys for a in rule.aggregates):
            problems.append(
                (
                    loc,
                    "an offer rule reads the profile document (profile.*, profile.traits.*, "
                    "in_segment): put the aggregate in a trait and test profile.traits.NAME",
                )
            )
        bad = sorted(r for r in rule.segment_refs if r in keys)
        if bad:
            problems.append((loc, f"in_segment names an offer, not a segment: {bad[0]!r}"))
    if problems:
        raise ConfigError(*(_located(config, loc, message) for loc, message in problems))
    out: dict[str, tuple[Offer, ...]] = {}
    for placement in settings.offers:
        offers = [_offer(placement.placement, o, compiled, trait_keys) for o in placement.offers]
        offers.sort(key=lambda o: -o.priority)  # stable: ties keep the file's order
        out[placement.placement] = tuple(offers)
    return out


def _offer(
    placement: str,
    offer: OfferSettings,
    compiled: Mapping[str, CompiledRule],
    trait_keys: Mapping[str, str],
) -> Offer:
    rule = compiled.get(f"{placement}/{offer.id}") if offer.rule is not None else None
    return Offer(
        offer.id,
        offer.priority,
        offer.content,
        offer.rule,
        None if rule is None else rule.evaluate,
        trait_keys,
    )


def _traits(settings: Settings) -> Mapping[str, Aggregate]:
    """The settings' traits compiled (`traits:` and `compile_traits` come with the projection
    side of issue #15: until both are there, `profile.traits.NAME` reads the document's
    `traits` like any other path)."""
    declared = getattr(settings, "traits", ())
    compile_traits = getattr(rules, "compile_traits", None)
    if not declared or compile_traits is None:
        return {}
    compiled: Mapping[str, Aggregate] = compile_traits([(t.name, t.value) for t in declared])
    return compiled


def _compile(
    items: Sequence[tuple[str, str]], traits: Mapping[str, Aggregate]
) -> tuple[CompiledRule, ...]:
    if not traits:
        return compile_rules(items)
    with_traits: Any = compile_rules  # takes the traits once issue #15's projection is in
    compiled: tuple[CompiledRule, ...] = with_traits(items, traits)
    return compiled


def _located(config: Path | None, loc: tuple[str | int, ...], message: str) -> str:
    dotted = ".".join(str(p) for p in loc)
    if config is None:
        return f"{dotted}: {message}"
    return f"{config}: line {line_in_file(config, loc)}: {dotted}: {message}"


def decide(placement: str, offers: Sequence[Offer], document: Mapping[str, Any] | None) -> Decision:
    """The first offer, by priority, whose rule holds for the document (None: an unknown
    person, who gets what a rule over an empty profile allows)."""
    ctx: EvalContext = DocumentContext(document, offers[0].traits if offers else None)
    for offer in offers:
        if offer.holds is None or offer.holds(ctx):
            return Decision(placement, offer)
    return Decision(placement, None)
