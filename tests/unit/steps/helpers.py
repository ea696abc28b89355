"""Plain helpers for the unit tests of the steps (`operators.steps`): a small config, records,
and the steps wired as `operators.engine.Engine.__init__` wires them. Each test file drives only
the step it covers; the others are there because that step's constructor asks for them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from config.settings import Settings, parse_settings
from operators.decode import Decoder
from operators.identity import IdentityRules
from operators.rules import compile_rules
from operators.segments import SegmentIndex
from operators.steps.call import Call, Output
from operators.steps.exchange import Exchange, FlowCounts
from operators.steps.graph import Graph
from operators.steps.history import History
from operators.steps.membership import Membership
from operators.steps.outbox import Outbox
from operators.steps.positions import Positions
from operators.steps.privacy import Consent, Privacy
from operators.steps.profiles import Profiles
from operators.steps.rollout import Rollout
from operators.steps.stats import EngineStats, Published
from operators.steps.timers import Timers
from operators.store import MemoryStore, Store, Txn
from schemas.records import AudienceChange, Origin, Record

CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - {name: web, kind: event, path: w.jsonl}
  - {name: crm, kind: profile, path: c.json, identities: {email: Email}}
segments:
  - {id: buyers, rule: 'exists(event.eventType == "buy")'}
  - {id: vip, rule: 'profile.tier == "vip"'}
  - {id: busy, rule: 'count(event.eventType == "view", within="1h") >= 2'}
  - {id: no-tier, rule: 'profile.tier == null'}
"""
MIN = 60_000
H = 60 * MIN


def settings(text: str = CONFIG) -> Settings:
    return parse_settings(text, Path("/c.yaml"), {}, {})


class Feed:
    """Decoded records, numbered by offset per (source, partition) unless told."""

    def __init__(self, config: Settings) -> None:
        self.decoder = Decoder.from_settings(config)
        self.offsets: dict[tuple[str, int], int] = {}

    def __call__(
        self,
        source: str,
        body: dict[str, Any],
        *,
        offset: int | None = None,
        partition: int = 0,
        seq: int = 0,
    ) -> Record:
        if offset is None:
            offset = self.offsets.get((source, partition), 0) + 1
        self.offsets[(source, partition)] = offset
        rec = self.decoder.decode(Origin(source, partition, offset), orjson.dumps(body))
        assert isinstance(rec, Record), rec
        return replace(rec, seq=seq) if seq else rec


def ev(
    eid: str, kind: str, ts: int, ecid: str | None = None, email: str | None = None
) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    if ecid:
        ids["ECID"] = [{"id": ecid}]
    if email:
        ids["Email"] = [{"id": email}]
    return {"_id": eid, "eventType": kind, "timestamp": ts, "identityMap": ids}


def crm(email: str, **attrs: Any) -> dict[str, Any]:
    return {"email": email, **attrs}


def changes(out: list[Output]) -> list[tuple[str, str, str]]:
    return [(c.segment_id, c.status, c.reason) for c in out if isinstance(c, AudienceChange)]


def audience(out: list[Output]) -> list[AudienceChange]:
    return [c for c in out if isinstance(c, AudienceChange)]


def new_call(store: Store, wall_ms: int = 0) -> Call:
    return Call(Txn(store), wall_ms)


@dataclass
class Steps:
    store: Store
    stats: EngineStats
    published: Published
    index: SegmentIndex
    positions: Positions
    timers: Timers
    outbox: Outbox
    graph: Graph
    profiles: Profiles
    consent: Consent
    privacy: Privacy
    membership: Membership
    exchange: Exchange
    counts: FlowCounts
    history: History
    rollout: Rollout


def build(
    config: Settings,
    store: Store | None = None,
    *,
    role: Literal["all", "graph", "profile"] = "all",
    live: bool = False,
    lateness_ms: int = 0,
) -> Steps:
    """Every step over one store, wired as the engine wires them."""
    store = MemoryStore() if store is None else store
    stats = EngineStats()
    published = Published(stats, records=role != "profile")
    index = SegmentIndex(compile_rules([(s.id, s.rule) for s in config.segments]))
    rules, shards = IdentityRules.from_settings(config), config.shards
    graph_role = role == "graph"
    positions = Positions(store, graph=graph_role, live=live, lateness_ms=lateness_ms)
    timers = Timers(store, held=not graph_role)
    outbox = Outbox(store)
    graph = Graph(rules, shards, stats)
    profiles = Profiles(rules, shards, stats)
    consent = Consent(config.privacy)
    history = History(config.profile.history, shards, store)
    privacy = Privacy(
        store=store,
        consent=consent,
        graph=graph,
        profiles=profiles,
        history=history,
        outbox=outbox,
        stats=stats,
    )
    membership = Membership(
        index=index,
        profiles=profiles,
        timers=timers,
        positions=positions,
        consent=consent,
        stats=stats,
        published=published,
        destinations=config.destinations,
    )
    privacy.membership = membership
    rollout = Rollout(
        store=store,
        index=index,
        history=history,
        membership=membership,
        positions=positions,
        stats=stats,
        batch=config.profile.rollout_batch,
        held=not graph_role,
    )
    if not graph_role:
        membership.upgrade = rollout.upgrade
    counts = FlowCounts.load(store) if role == "profile" else FlowCounts()
    exchange = Exchange(
        index=index,
        positions=positions,
        profiles=profiles,
        history=history,
        rollout=rollout,
        membership=membership,
        privacy=privacy,
        outbox=outbox,
        stats=stats,
        counts=counts,
    )
    return Steps(
        store,
        stats,
        published,
        index,
        positions,
        timers,
        outbox,
        graph,
        profiles,
        consent,
        privacy,
        membership,
        exchange,
        counts,
        history,
        rollout,
    )
