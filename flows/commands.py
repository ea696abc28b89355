"""The commands over a state directory: profiles, export, identity clusters, explanations,
segment sizes and checks, GDPR deletes and webhook redelivery."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from config.checks import rules_in_file, traits_in_file
from config.settings import ConfigError, Settings, load_settings
from flows.deliver import deliver
from flows.options import wall_clock_ms
from flows.redeliver import redeliver
from flows.spool import SpoolBusy
from flows.usage import UsageError, settings_of, state_dir_of
from operators import queries
from operators.engine import Engine, build_index
from operators.explain import explain
from operators.identity import IdentityRules
from operators.offers import compile_offers
from operators.preview import PREVIEW_ID, StateView, preview
from operators.rules import Aggregate, CompiledRule, RuleErrors, compile_rules, compile_traits
from operators.steps.positions import WATERMARK_KEY
from operators.steps.profiles import profile_key
from operators.steps.rollout import summary as rollout_summary
from operators.store import decode, open_state, open_store, process_dirs
from schemas.records import AudienceChange, ProfileDocument, iso_ms, parse_identity


def _open_read(args: argparse.Namespace) -> tuple[Settings, Any, int]:
    settings = load_settings(args.config)
    store = open_state(state_dir_of(args, settings))
    return settings, store, settings.shards


def _identity_arg(text: str) -> tuple[str, str]:
    try:
        return parse_identity(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _normalised(settings: Settings, text: str) -> tuple[str, str]:
    namespace, value = _identity_arg(text)
    normal = IdentityRules.from_settings(settings).normalize(namespace, value)
    if not normal:
        raise UsageError(f"{namespace} value is empty or blocked: it is no identity")
    return namespace, normal


def cmd_profile(args: argparse.Namespace) -> int:
    namespace = args.identity.split(":", 1)[0]

    def find(store: Any, shards: int, identity: tuple[str, str]) -> dict[str, Any] | None:
        return queries.find_profile(store, shards, identity, _traits_at(store, args))

    return _by_identity(args, find, f"no profile has the identity {namespace}:…")


def _traits_at(store: Any, args: argparse.Namespace) -> queries.Traits | None:
    """The traits of the config and the state's event time to read them at (a windowed
    trait counts what is in its window then, as the worker's rules read it)."""
    settings = load_settings(args.config)
    if not settings.traits:
        return None
    return build_index(settings), _state_now(store, settings)


def _by_identity(
    args: argparse.Namespace,
    query: Callable[[Any, int, tuple[str, str]], dict[str, Any] | None],
    missing: str,
) -> int:
    """One JSON document about the person holding `--identity` (exit 1 when there is none)."""
    settings, store, shards = _open_read(args)
    try:
        found = query(store, shards, _normalised(settings, args.identity))
    finally:
        store.close()
    if found is None:
        print(f"cdp: {missing}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(found, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _, store, shards = _open_read(args)
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    count = 0
    try:
        for doc in queries.iter_profiles(store, shards, _traits_at(store, args)):
            out.write(orjson.dumps(doc) + b"\n")
            count += 1
    finally:
        store.close()
        if args.out:
            out.close()
    print(f"exported {count} profiles", file=sys.stderr)
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    return _by_identity(args, queries.cluster_report, "that identity is in no cluster")


def cmd_explain(args: argparse.Namespace) -> int:
    settings, store, shards = _open_read(args)
    index = build_index(settings)
    try:
        identity = _normalised(settings, args.identity)
        canonical = queries.canonical_of(store, shards, identity)
        stored = None if canonical is None else store.get(profile_key(canonical, shards))
        now = _state_now(store, settings)
        if canonical is not None and stored is not None:
            # A profile not yet brought to edited definitions: its missing inputs are rebuilt
            # from its history, as the rollout will.
            profile, partial = StateView(store, settings, index).complete(
                canonical, decode(stored), now
            )
    finally:
        store.close()
    if canonical is None or stored is None:
        print(f"cdp: no profile has the identity {identity[0]}:…", file=sys.stderr)
        return 1
    try:
        report = explain(profile, index, args.segment, now, history_from=partial)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from exc
    print(report.render())
    return 0 if report.member else 3


OFFLINE_KEY = 9999  # the outbox key of commands run outside a dataflow


def cmd_forget(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    identity = _normalised(settings, args.identity)
    if process_dirs(state_dir_of(args, settings)):
        raise UsageError(
            "this state was built by several processes: send the delete to the privacy topic "
            "of the running cluster instead"
        )
    store = open_store(state_dir_of(args, settings))
    sent: dict[str, int] = {}
    try:
        engine = Engine(settings, store)
        found = engine.forget(OFFLINE_KEY, identity, wall_clock_ms())
        changes = None if found is None else [c for c in found if isinstance(c, AudienceChange)]
        documents = [d for d in found or () if isinstance(d, ProfileDocument)]
        if changes or documents:
            spool = state_dir_of(args, settings) / "spool"
            sent = deliver(settings, changes or [], spool, documents)
        engine.prune_outbox(OFFLINE_KEY, engine.outbox_seq(OFFLINE_KEY))
    finally:
        store.close()
    if changes is None:
        print(
            f"no profile holds that {identity[0]}; it is tombstoned so none will", file=sys.stderr
        )
        return 1
    print(f"forgot the person; {len(changes)} memberships exited (reason delete)", file=sys.stderr)
    for name, count in sent.items():
        print(f"  {name}: {count} changes sent", file=sys.stderr)
    return 0


def cmd_redeliver(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    state_dir = state_dir_of(args, settings)
    try:
        outcome = redeliver(settings, args.destination, state_dir)
    except (ValueError, SpoolBusy) as exc:
        raise UsageError(str(exc)) from exc
    if not outcome.spools:
        print(f"{args.destination}: no spool in {state_dir}: nothing to deliver", file=sys.stderr)
        return 0
    print(
        f"{args.destination}: {outcome.delivered} delivered, {outcome.refused} refused (to the "
        f"dead letters), {outcome.delivered_before} delivered before (not sent again), "
        f"{outcome.left} left in the spool",
        file=sys.stderr,
    )
    return 1 if outcome.left else 0


def cmd_segments_check(args: argparse.Namespace) -> int:
    """Every check a worker makes at start (the settings, their cross-references, the rules),
    each problem with its file and line; exit 1 on any."""
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    written = rules_in_file(args.config)
    written_traits = traits_in_file(args.config)
    lines = {seg_id: line for seg_id, _, line in written}
    trait_lines = {name: line for name, _, line in written_traits}
    if settings is not None:
        segments = [(s.id, s.rule) for s in settings.segments]
        trait_texts = [(t.name, t.value) for t in settings.traits]
    else:  # still check the rules the file holds
        segments = [(seg_id, rule) for seg_id, rule, _ in written]
        trait_texts = [(name, value) for name, value, _ in written_traits]
    compiled: tuple[CompiledRule, ...] = ()
    traits: dict[str, Aggregate] = {}
    try:
        traits = compile_traits(trait_texts)
    except RuleErrors as exc:
        for error in exc.errors:
            line = trait_lines.get(error.segment_id, 1)
            problems.append(f"{args.config}: line {line}: {error}")
    try:
        compiled = compile_rules(segments, traits)
    except RuleErrors as exc:
        for error in exc.errors:
            problems.append(f"{args.config}: line {lines.get(error.segment_id, 1)}: {error}")
    if settings is not None and settings.offers:  # `cdp serve`'s offer rules
        try:
            compile_offers(settings, args.config)
        except ConfigError as exc:
            problems.extend(exc.problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.config}", file=sys.stderr)
        return 1
    for rule in compiled:
        print(f"ok  {rule.segment_id}: {rule.text}")
    assert settings is not None
    print(
        f"{args.config}: ok ({len(settings.namespaces)} namespaces, "
        f"{len(settings.sources)} sources, {len(compiled)} segments, "
        f"{len(settings.destinations)} destinations)"
    )
    return 0


def cmd_segments_sizes(args: argparse.Namespace) -> int:
    settings, store, _ = _open_read(args)
    try:
        sizes = queries.segment_sizes(store)
        rolled = rollout_summary(store)
    finally:
        store.close()
    width = max((len(s.id) for s in settings.segments), default=10)
    for seg in settings.segments:
        note = ""
        if seg.id in rolled["partial"]:
            since = iso_ms(rolled["partial"][seg.id])[:10]
            note = f"  (history from {since}: evaluated on the events kept since then)"
        print(f"{seg.id:<{width}}  {sizes.get(seg.id, 0)}{note}")
    if rolled["pending"]:
        print("note: edited audiences are still being rolled out (a worker finishes it)")
    return 0


def _state_now(store: Any, settings: Settings) -> int:
    """The state's event time, as `cdp explain` and the worker evaluate rules."""
    watermark = store.get(WATERMARK_KEY)
    return 0 if watermark is None else int(watermark) - settings.time.allowed_lateness_ms


def cmd_segments_preview(args: argparse.Namespace) -> int:
    settings, store, _ = _open_read(args)
    try:
        now = _state_now(store, settings)
        found = preview(
            store, settings, now, rule=args.rule, segment_id=args.segment, sample=args.sample
        )
    except RuleErrors as exc:
        problems = "; ".join(str(e) for e in exc.errors)
        raise UsageError(problems.replace(f"segment {PREVIEW_ID!r}", "the rule")) from exc
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from exc
    finally:
        store.close()
    since = None if found.history_from is None else iso_ms(found.history_from)
    doc: dict[str, Any] = {
        "segment": found.segment_id,
        "rule": found.rule,
        "event_time": iso_ms(found.now_ms),
        "profiles": found.profiles,
        "size": found.size,
        "sample": found.sample,
        "partial_history": {
            "profiles": found.partial,
            "history_from": since,
        },
    }
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
        return 0
    print(f"rule: {found.rule}")
    print(f"at event time {doc['event_time']}, over {found.profiles} profiles")
    print(f"estimated size: {found.size}")
    if found.partial:
        print(
            f"history from {since}: {found.partial} profiles "
            "were evaluated on the events kept since then (the rule reads further back)"
        )
    print(f"sample ({len(found.sample)} of {found.size}):")
    for member in found.sample:
        ids = ", ".join(f"{ns}:{v}" for ns, vs in member["identities"].items() for v in vs)
        print(f"  {member['profile_id']}  {ids}")
    return 0
