"""A rule evaluated over a state as it is, without changing it (`cdp segments preview`,
and `cdp explain` of a profile not yet brought to edited definitions): the inputs the state
holds for the definitions a profile was built for are used as they are, every other input is
rebuilt from the profile's history (`operators.steps.history`), at the state's event time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from config.settings import Settings
from operators import profile as prof
from operators import queries
from operators.identity import profile_id
from operators.rules import Absent, Aggregate, compile_rules, compile_traits
from operators.segments import SegmentIndex, evaluate
from operators.steps.history import History, partial_since
from operators.steps.profiles import PREFIX as PROFILES
from operators.steps.rollout import BASE_KEY, VERSIONS
from operators.store import Store, identity_from_key
from schemas.records import Identity

PREVIEW_ID = "__preview__"


class StateView:
    """The profiles of a store with their inputs complete for `index`'s rules."""

    def __init__(self, store: Store, settings: Settings, index: SegmentIndex) -> None:
        self.store = store
        self.index = index
        self.history = History(settings.profile.history, settings.shards, store)
        base = store.get(BASE_KEY)
        self._base = None if base is None else base.decode()
        self._held: dict[str | None, frozenset[str]] = {}
        self._wanted = frozenset(index.aggregates) | frozenset(index.absents)

    def _inputs_held(self, version: str | None) -> frozenset[str]:
        """The inputs a profile at `version` holds exactly (a state from before versions
        were recorded: every input of the rules configured now)."""
        if version not in self._held:
            raw = None if version is None else self.store.get(VERSIONS + version.encode())
            self._held[version] = (
                self._wanted if raw is None else frozenset(orjson.loads(raw)["inputs"])
            )
        return self._held[version]

    def complete(
        self, canonical: Identity, profile: prof.Profile, now_ms: int
    ) -> tuple[prof.Profile, int | None]:
        """The profile with every input `index` reads, and from when the rebuilt ones saw the
        history (None: complete)."""
        index = self.index
        inputs: list[Aggregate | Absent] = [*index.aggregates.values(), *index.absents.values()]
        held = partial_since(profile.get("hfrom") or {}, inputs, now_ms)
        missing = self._wanted - self._inputs_held(profile.get("v", self._base))
        if not missing or not profile["events"]:
            return profile, held
        aggs = [index.aggregates[k] for k in sorted(missing) if k in index.aggregates]
        absents = [index.absents[k] for k in sorted(missing) if k in index.absents]
        view = self.history.view(self.store, canonical, profile, now_ms)
        rebuilt = prof.rebuild_inputs(profile, view.events, aggs, absents)
        rebuilt_from = {} if view.from_ms is None else dict.fromkeys(missing, view.from_ms)
        read: list[Aggregate | Absent] = [*aggs, *absents]
        partial = partial_since(rebuilt_from, read, now_ms)
        return rebuilt, max((p for p in (held, partial) if p is not None), default=None)

    def profiles(self) -> Iterator[tuple[Identity, prof.Profile]]:
        for key, raw in self.store.scan(PROFILES):
            yield identity_from_key(key), orjson.loads(raw)


@dataclass
class Preview:
    segment_id: str
    rule: str
    now_ms: int
    size: int = 0
    profiles: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    partial: int = 0  # profiles evaluated on less history than the rule's window
    history_from: int | None = None  # the latest "history from" among them


def preview(
    store: Store,
    settings: Settings,
    now_ms: int,
    *,
    rule: str | None = None,
    segment_id: str | None = None,
    sample: int = 10,
) -> Preview:
    """The size and a sample of the members `rule` (or the configured `segment_id`) has over
    the state at `now_ms`. Raises RuleErrors for a rule that does not compile, KeyError for
    an unknown segment."""
    segments = [(s.id, s.rule) for s in settings.segments]
    if rule is not None:
        target = PREVIEW_ID
        segments.append((PREVIEW_ID, rule))
    else:
        assert segment_id is not None
        if segment_id not in {s for s, _ in segments}:
            known = ", ".join(s for s, _ in segments)
            raise KeyError(f"no segment {segment_id!r} in the config (known: {known})")
        target = segment_id
    traits = compile_traits([(t.name, t.value) for t in settings.traits])
    index = SegmentIndex(compile_rules(segments, traits), traits)
    text = next(r.text for r in index.rules if r.segment_id == target)
    state = StateView(store, settings, index)
    out = Preview(target if rule is None else "(rule)", text, now_ms)
    shards = settings.shards
    for canonical, stored in state.profiles():
        out.profiles += 1
        profile, partial = state.complete(canonical, stored, now_ms)
        if partial is not None:
            out.partial += 1
            out.history_from = max(out.history_from or partial, partial)
        if not evaluate(profile, index, {target}, now_ms).get(target):
            continue
        out.size += 1
        if len(out.sample) < sample:
            cluster = queries.cluster_of(store, shards, canonical)
            out.sample.append(
                {"profile_id": profile_id(canonical), "identities": cluster.by_namespace()}
            )
    return out
