"""`cdp`: the command line of DESIGN §7."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from config.checks import rules_in_file
from config.settings import ConfigError, Settings, load_settings
from flows import feedback, io, logs, startup
from flows.deliver import deliver
from flows.generator import generate, write_files
from flows.options import RunOptions, routing_name, wall_clock_ms
from flows.pipeline import build_flow
from flows.progress import Progress
from flows.redeliver import redeliver
from flows.runtime import (
    check_event_time,
    check_routing,
    close_engines,
    engine_for,
    engines_of,
    run_flow,
)
from flows.spool import SpoolBusy
from operators import queries
from operators.engine import Engine, build_index
from operators.explain import explain
from operators.identity import IdentityRules
from operators.rules import CompiledRule, RuleErrors, compile_rules
from operators.steps.positions import WATERMARK_KEY
from operators.steps.profiles import profile_key
from operators.store import (
    StoreError,
    decode,
    open_state,
    open_store,
    process_dirs,
)
from schemas.records import AudienceChange, parse_identity


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.ensure_handler()
    try:
        return int(args.handler(args))
    except (ConfigError, RuleErrors, StoreError, UsageError, FileNotFoundError) as exc:
        print(f"cdp: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp", description="streaming-cdp: real-time CDP engine")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on a generated retail stream")
    demo.add_argument("--people", type=int, default=2000)
    demo.add_argument("--events", type=int, default=30000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--keep", type=Path, help="keep the generated data and state in this folder")
    demo.set_defaults(handler=cmd_demo)

    replay = sub.add_parser("replay", help="backfill to the end of input")
    _config_args(replay, state=True)
    replay.add_argument("--files", action="store_true", help="read the sources' files, not Kafka")
    replay.add_argument("--from-timestamp", help="ISO-8601: skip events before this time")
    replay.add_argument("--workers", type=int, default=1)
    _cluster_args(replay)
    replay.add_argument("--audience-out", type=Path, help="also write every change to this file")
    replay.add_argument("--quiet", action="store_true", help="no progress line")
    _reset_arg(replay)
    replay.set_defaults(handler=cmd_replay)

    run = sub.add_parser("run", help="a streaming worker over Kafka")
    _config_args(run, state=True, state_required=False)
    run.add_argument("--workers", type=int, default=1)
    _cluster_args(run)
    run.add_argument("--audience-out", type=Path)
    _reset_arg(run)
    run.set_defaults(handler=cmd_run)

    profile = sub.add_parser("profile", help="one profile as JSON")
    _config_args(profile, state=True, state_required=False)
    profile.add_argument("--identity", required=True, help="NAMESPACE:VALUE")
    profile.set_defaults(handler=cmd_profile)

    export = sub.add_parser("export", help="every profile, one JSON object per line")
    _config_args(export, state=True, state_required=False)
    export.add_argument("--out", type=Path)
    export.set_defaults(handler=cmd_export)

    identity = sub.add_parser("identity", help="a cluster: members, links, refused links")
    _config_args(identity, state=True, state_required=False)
    identity.add_argument("--identity", required=True, help="NAMESPACE:VALUE")
    identity.set_defaults(handler=cmd_identity)

    explain = sub.add_parser("explain", help="why a profile is or is not in a segment")
    _config_args(explain, state=True, state_required=False)
    explain.add_argument("--identity", required=True, help="NAMESPACE:VALUE")
    explain.add_argument("--segment", required=True, help="segment id")
    explain.set_defaults(handler=cmd_explain)

    forget = sub.add_parser("forget", help="GDPR delete of a person's whole cluster")
    _config_args(forget, state=True, state_required=False)
    forget.add_argument("--identity", required=True, help="NAMESPACE:VALUE")
    forget.set_defaults(handler=cmd_forget)

    redeliver = sub.add_parser(
        "redeliver", help="deliver now what a webhook destination's spool holds (no worker running)"
    )
    _config_args(redeliver, state=True, state_required=False)
    redeliver.add_argument("--destination", required=True, help="the webhook destination's name")
    redeliver.set_defaults(handler=cmd_redeliver)

    segments = sub.add_parser("segments", help="check rules, or show segment sizes")
    seg_sub = segments.add_subparsers(dest="segments_command", required=True)
    check = seg_sub.add_parser("check", help="validate every rule")
    _config_args(check)
    check.set_defaults(handler=cmd_segments_check)
    sizes = seg_sub.add_parser("sizes", help="current size of every segment")
    _config_args(sizes, state=True, state_required=False)
    sizes.set_defaults(handler=cmd_segments_sizes)
    return parser


def _reset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reset-event-time",
        action="store_true",
        help="take a state's event time back to the wall clock when a record from a wrong "
        "clock moved it ahead (the start refuses such a state otherwise)",
    )


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i", "--process-id", type=int, default=0, help="this process's index in --addresses"
    )
    p.add_argument(
        "-a",
        "--addresses",
        action="append",
        default=[],
        help="host:port of every process, in order (repeat); several make a cluster whose "
        "processes share --state-dir and exchange merged profiles over the feedback topic",
    )


def _cluster_options(args: argparse.Namespace, root: Path, files: bool) -> dict[str, Any]:
    """RunOptions fields for `-i/-a`: each process keeps its own store under the shared
    state directory (`process-N/`) and they share the run id and the recovery snapshots."""
    addresses: list[str] = args.addresses
    if len(addresses) <= 1:
        if args.process_id:
            raise UsageError("--process-id needs --addresses of every process")
        return {"state_dir": root}
    if not 0 <= args.process_id < len(addresses):
        raise UsageError(f"--process-id must be 0..{len(addresses) - 1}")
    if files:
        raise UsageError("several processes read Kafka (they exchange merges over it): no --files")
    return {
        "state_dir": root / f"process-{args.process_id}",
        "processes": len(addresses),
        "process_id": args.process_id,
        "run": feedback.run_token(root),
    }


def _config_args(
    p: argparse.ArgumentParser, *, state: bool = False, state_required: bool = True
) -> None:
    p.add_argument("--config", type=Path, required=True, help="the YAML settings file")
    if state:
        help_text = "state directory" + (
            "" if state_required else " (default: state.dir of the config)"
        )
        p.add_argument("--state-dir", type=Path, required=state_required, help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    compile_rules([(s.id, s.rule) for s in settings.segments])  # refuse bad rules at start
    return settings


def _state_dir(args: argparse.Namespace, settings: Settings) -> Path:
    given = getattr(args, "state_dir", None)
    return Path(given) if given is not None else settings.state_dir


def _run_flow(
    settings: Settings,
    options: RunOptions,
    *,
    progress: bool = False,
    addresses: list[str] | None = None,
    reset_event_time: bool = False,
) -> None:
    if options.workers < 1:
        raise UsageError("--workers must be at least 1")
    check_routing(options.state_dir, routing_name(options))
    check_event_time(
        options.state_dir,
        options.clock(),
        settings.time.max_future_ms,
        reset=reset_event_time,
    )
    flow = build_flow(settings, options)
    # Several processes share the recovery snapshots (Bytewax resumes them together).
    root = options.state_dir.parent if options.clustered else options.state_dir
    recovery = root / "recovery" if settings.recovery.enabled else None
    label = "replay"
    if options.clustered:
        label = f"replay, process {options.process_id} of {options.processes}"
    report = Progress(
        settings,
        partial(engines_of, options.state_dir),
        kafka=options.mode == "replay",
        label=label,
    )
    cluster: dict[str, Any] = {}
    if options.clustered:
        cluster = {"addresses": addresses, "process_id": options.process_id}
    try:
        with contextlib.ExitStack() as stack:
            if options.clustered:
                stack.enter_context(_feedback_status(settings, options))
            if progress:
                stack.enter_context(report)
            run_flow(
                flow,
                options.workers,
                recovery,
                settings.recovery.epoch_interval_ms,
                **cluster,
            )
    finally:
        close_engines()
        io.close_files()


def _feedback_status(
    settings: Settings, options: RunOptions
) -> contextlib.AbstractContextManager[Any]:
    """Several processes: the feedback topic exists, and (replay) this process reports its
    work counts on it so the run ends when every process is done."""
    config = settings.kafka.client_config()
    feedback.ensure_topic(config, settings.identity.feedback_topic)
    if options.mode == "live":
        return contextlib.nullcontext()
    return feedback.StatusPublisher(
        config,
        settings.identity.feedback_topic,
        options.run,
        process=options.process_id,
        counts=lambda: [e.counts for e in engines_of(options.state_dir)],
    )


def _parse_time(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--from-timestamp {text!r} is not ISO-8601") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = _state_dir(args, settings)
    if not args.files:  # refuse missing topics, say where each partition is read from
        startup.check_sources(settings, root)
    options = RunOptions(
        mode="files" if args.files else "replay",
        audience_out=args.audience_out,
        from_ts_ms=_parse_time(args.from_timestamp) if args.from_timestamp else None,
        workers=args.workers,
        recovery=settings.recovery.enabled,
        **_cluster_options(args, root, args.files),
    )
    started = time.monotonic()
    _run_flow(
        settings,
        options,
        progress=not args.quiet,
        addresses=args.addresses,
        reset_event_time=args.reset_event_time,
    )
    print(
        f"replay finished in {time.monotonic() - started:.1f}s; state in {root}",
        file=sys.stderr,
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    startup.check_sources(settings, _state_dir(args, settings))
    options = RunOptions(
        mode="live",
        audience_out=args.audience_out,
        workers=args.workers,
        recovery=settings.recovery.enabled,
        **_cluster_options(args, _state_dir(args, settings), False),
    )
    _run_flow(settings, options, addresses=args.addresses, reset_event_time=args.reset_event_time)
    return 0


def _open_read(args: argparse.Namespace) -> tuple[Settings, Any, int]:
    settings = load_settings(args.config)
    store = open_state(_state_dir(args, settings))
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
    settings, store, shards = _open_read(args)
    try:
        doc = queries.find_profile(store, shards, _normalised(settings, args.identity))
    finally:
        store.close()
    if doc is None:
        print(
            f"cdp: no profile has the identity {args.identity.split(':', 1)[0]}:…", file=sys.stderr
        )
        return 1
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _, store, shards = _open_read(args)
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    count = 0
    try:
        for doc in queries.iter_profiles(store, shards):
            out.write(orjson.dumps(doc) + b"\n")
            count += 1
    finally:
        store.close()
        if args.out:
            out.close()
    print(f"exported {count} profiles", file=sys.stderr)
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    settings, store, shards = _open_read(args)
    try:
        report = queries.cluster_report(store, shards, _normalised(settings, args.identity))
    finally:
        store.close()
    if report is None:
        print("cdp: that identity is in no cluster", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    settings, store, shards = _open_read(args)
    try:
        identity = _normalised(settings, args.identity)
        canonical = queries.canonical_of(store, shards, identity)
        stored = None if canonical is None else store.get(profile_key(canonical, shards))
        watermark = store.get(WATERMARK_KEY)
    finally:
        store.close()
    if stored is None:
        print(f"cdp: no profile has the identity {identity[0]}:…", file=sys.stderr)
        return 1
    index = build_index(settings)
    now = 0 if watermark is None else int(watermark) - settings.time.allowed_lateness_ms
    try:
        report = explain(decode(stored), index, args.segment, now)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from exc
    print(report.render())
    return 0 if report.member else 3


OFFLINE_KEY = 9999  # the outbox key of commands run outside a dataflow


def cmd_forget(args: argparse.Namespace) -> int:
    settings = _settings(args)
    identity = _normalised(settings, args.identity)
    if process_dirs(_state_dir(args, settings)):
        raise UsageError(
            "this state was built by several processes: send the delete to the privacy topic "
            "of the running cluster instead"
        )
    store = open_store(_state_dir(args, settings))
    sent: dict[str, int] = {}
    try:
        engine = Engine(settings, store)
        found = engine.forget(OFFLINE_KEY, identity, wall_clock_ms())
        changes = None if found is None else [c for c in found if isinstance(c, AudienceChange)]
        if changes:
            sent = deliver(settings, changes, _state_dir(args, settings) / "spool")
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
    state_dir = _state_dir(args, settings)
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
    lines = {seg_id: line for seg_id, _, line in written}
    if settings is not None:
        segments = [(s.id, s.rule) for s in settings.segments]
    else:  # still check the rules the file holds
        segments = [(seg_id, rule) for seg_id, rule, _ in written]
    compiled: tuple[CompiledRule, ...] = ()
    try:
        compiled = compile_rules(segments)
    except RuleErrors as exc:
        for error in exc.errors:
            problems.append(f"{args.config}: line {lines.get(error.segment_id, 1)}: {error}")
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
    finally:
        store.close()
    width = max((len(s.id) for s in settings.segments), default=10)
    for seg in settings.segments:
        print(f"{seg.id:<{width}}  {sizes.get(seg.id, 0)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cdp-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        stream = generate(args.people, args.events, seed=args.seed)
        write_files(stream, workdir)
        config_path = workdir / "cdp.yaml"
        shutil.copyfile(Path(__file__).resolve().parents[1] / "config" / "demo.yaml", config_path)
        settings = load_settings(config_path)
        state_dir = workdir / "state"
        audience_out = workdir / "all-changes.jsonl"
        options = RunOptions(mode="files", state_dir=state_dir, audience_out=audience_out)
        flow = build_flow(settings, options)
        try:
            run_flow(flow, 1, state_dir / "recovery")
            stats = engine_for(settings, state_dir).stats
        finally:
            close_engines()
            io.close_files()
        _print_summary(settings, state_dir, audience_out, stats, time.monotonic() - started)
        if args.keep:
            print(f"\ndata, config and state kept in {workdir}")
            print(f"try: cdp export --config {config_path} --state-dir {state_dir} | head -2")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _print_summary(
    settings: Settings, state_dir: Path, changes_file: Path, stats: Any, seconds: float
) -> None:
    dead_file = settings.resolve(settings.dead_letters.path)
    dead = _read_lines(dead_file)
    changes = _read_lines(changes_file)
    store = open_store(state_dir, read_only=True)
    try:
        graph = queries.graph_summary(store)
        sizes = queries.segment_sizes(store)
    finally:
        store.close()
    reasons: dict[str, int] = {}
    for d in dead:
        reason = str(d["reason"]).split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    print("streaming-cdp demo: a generated Luma retail stream through the whole pipeline")
    applied, bad = stats.records, len(dead)
    print(f"  records in       {applied + bad:>8}  ({applied} applied, {bad} dead letters)")
    for reason, n in sorted(reasons.items()):
        print(f"    dead letter    {n:>8}  {reason}")
    print(f"  duplicate events {stats.duplicates:>8}")
    linked = graph["linked_clusters"]
    print(f"  profiles         {graph['profiles']:>8}  ({linked} with more than one identity)")
    print(
        f"  identity links   {stats.merges:>8}  (unions of two clusters, new identities included)"
    )
    print(f"  refused links    {graph['refused_links']:>8}  (unique namespace or cluster size)")
    print(f"  timers fired     {stats.timers_fired:>8}")
    print(f"  audience changes {len(changes):>8}")
    print("  audience sizes now:")
    for seg in settings.segments:
        print(f"    {seg.id:<28} {sizes.get(seg.id, 0):>6}  {seg.name}")
    print("  sample changes:")
    seen: set[tuple[str, str]] = set()
    for change in changes:
        key = (change["segment_id"], change["status"])
        if key in seen:
            continue
        seen.add(key)
        print(
            f"    {change['event_time']}  {change['status']:<7} {change['segment_id']:<24} "
            f"{change['profile_id']}  reason={change['reason']}"
        )
    print(f"  took {seconds:.1f}s")


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
