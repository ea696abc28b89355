"""Why a profile is or is not in a segment: every sub-expression's value, and when the
windowed parts change next (pure: the caller gives the stored profile and `now`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from operators.absent import absent_init, absent_next_change
from operators.aggregates import agg_init, agg_next_change
from operators.profile import Profile
from operators.segments import SegmentIndex, context
from operators.steps.history import partial_since
from schemas.records import iso_ms


@dataclass(frozen=True, slots=True)
class Explanation:
    segment_id: str
    rule: str
    member: bool  # the stored membership (what destinations were told)
    holds_now: bool  # the rule evaluated again at `now`
    now_ms: int
    lines: tuple[tuple[int, str, Any, str], ...]  # depth, text, value, detail
    next_changes: tuple[tuple[str, int], ...]  # windowed part, event time it can change
    facts: tuple[str, ...] = ()  # what the absent(...) parts saw
    timer_ms: int | None = None  # the profile's timer: the next moment one of its segments flips
    # The rule reads further back than the events kept when its inputs were rebuilt.
    history_from: int | None = None

    def render(self) -> str:
        status = "IN" if self.member else "NOT IN"
        out = [f"{status} segment {self.segment_id!r} at event time {iso_ms(self.now_ms)}"]
        out.append(f"rule: {self.rule}")
        for depth, text, value, detail in self.lines:
            verdict = str(value).lower()
            shown = verdict if detail in ("", verdict) else f"{detail}  ->  {verdict}"
            out.append(f"{'  ' * (depth + 1)}{text}  =  {shown}")
        for fact in self.facts:
            out.append(f"  {fact}")
        if self.history_from is not None:
            out.append(
                f"history from {iso_ms(self.history_from)}: the rule reads further back, and "
                "this profile's earlier events were not kept (profile.history), so they do "
                "not count"
            )
        timer = self.timer_ms
        if self.holds_now != self.member:
            verdict = str(self.holds_now).lower()
            if timer is not None and timer <= self.now_ms:
                out.append(
                    f"note: the rule gives {verdict} now; the profile's timer is due and "
                    "applies it when the worker next runs"
                )
            elif timer is not None:
                out.append(
                    f"note: the rule gives {verdict} now; the profile's timer at "
                    f"{iso_ms(timer)} re-evaluates it"
                )
            else:
                out.append(
                    f"note: the rule gives {verdict} now, but no timer is pending for "
                    "this profile: the membership changes with its next record"
                )
        for text, at in self.next_changes:
            out.append(f"next change: {text} at {iso_ms(at)}")
        if timer is not None:
            out.append(
                f"profile timer: {iso_ms(timer)} (the next moment one of this profile's "
                "segments can change with no new event; changes in between alter none)"
            )
        else:
            out.append("profile timer: none (no segment of this profile changes without a record)")
        return "\n".join(out)


def explain(
    profile: Profile,
    index: SegmentIndex,
    segment_id: str,
    now_ms: int,
    *,
    history_from: int | None = None,
) -> Explanation:
    """`history_from`: the profile's inputs were just rebuilt from a history that starts
    then (else the profile's own record of inputs rebuilt on partial history is read)."""
    rule = next((r for r in index.rules if r.segment_id == segment_id), None)
    if rule is None:
        known = ", ".join(sorted(index.all_ids()))
        raise KeyError(f"no segment {segment_id!r} (known: {known})")
    ctx = context(profile, index, now_ms)
    lines = tuple((ln.depth, ln.text, ln.value, ln.detail) for ln in rule.explain(ctx))
    held = profile["segs"].get(segment_id)
    upcoming: list[tuple[str, int]] = []
    for agg in rule.aggregates:
        if agg.within_ms is not None:
            state = profile["aggs"].get(agg.key, agg_init(agg))
            at = agg_next_change(state, agg, now_ms)
            if at is not None:
                upcoming.append((agg.text or agg.key, at))
    facts: list[str] = []
    for absent in rule.absents:
        state = profile["abs"].get(absent.key, absent_init(absent))
        at = absent_next_change(state, absent, now_ms)
        if at is not None:
            upcoming.append((absent.text or absent.key, at))
        facts.append(_absent_fact(state, absent.within_ms, now_ms))
    return Explanation(
        segment_id=segment_id,
        rule=rule.text,
        member=bool(held and held[0]),
        holds_now=bool(rule.evaluate(ctx)),
        now_ms=now_ms,
        lines=lines,
        next_changes=tuple(sorted(upcoming, key=lambda item: item[1])),
        facts=tuple(facts),
        timer_ms=profile.get("timer"),
        history_from=history_from
        or partial_since(profile.get("hfrom") or {}, [*rule.aggregates, *rule.absents], now_ms),
    )


def _absent_fact(state: Any, within_ms: int, now_ms: int) -> str:
    after_times, missing_times = state
    seen = [t for t in after_times if t <= now_ms]
    if not seen:
        return "absent: no `after` event yet"
    last = seen[-1]
    followed = [t for t in missing_times if last < t <= last + within_ms]
    if followed:
        return f"absent: last `after` event at {iso_ms(last)}, followed at {iso_ms(followed[0])}"
    return f"absent: last `after` event at {iso_ms(last)}, nothing followed it yet"
