"""`cdp`: the command line of DESIGN §7."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from config.settings import ConfigError, Settings
from flows import feedback, io, logs, startup
from flows.commands import (
    cmd_explain,
    cmd_export,
    cmd_forget,
    cmd_identity,
    cmd_profile,
    cmd_redeliver,
    cmd_segments_check,
    cmd_segments_preview,
    cmd_segments_sizes,
)
from flows.demo import cmd_demo
from flows.journeys_commands import cmd_journeys_status, cmd_journeys_trace
from flows.options import RunOptions, routing_name
from flows.pipeline import build_flow
from flows.progress import Progress
from flows.runtime import (
    check_event_time,
    check_routing,
    close_engines,
    engines_of,
    run_flow,
)
from flows.usage import UsageError, settings_of, state_dir_of
from operators.rules import RuleErrors
from operators.store import (
    StoreError,
)


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
    preview = seg_sub.add_parser(
        "preview",
        help="estimated size and sample members of a rule or segment, before activating it "
        "(read-only; may run beside a worker)",
    )
    _config_args(preview, state=True, state_required=False)
    what = preview.add_mutually_exclusive_group(required=True)
    what.add_argument("--rule", help="a rule never configured (the rule language, DESIGN §5)")
    what.add_argument("--segment", help="a segment of the config (edited or not yet rolled out)")
    preview.add_argument("--sample", type=int, default=10, help="members to show (default 10)")
    preview.add_argument("--json", action="store_true", help="one JSON object")
    preview.set_defaults(handler=cmd_segments_preview)
    journeys = sub.add_parser(
        "journeys", help="what the journeys did: totals and instances in flight, a person's trace"
    )
    j_sub = journeys.add_subparsers(dest="journeys_command", required=True)
    status = j_sub.add_parser(
        "status",
        help="per journey: instances in flight per step, entered, sent, late, capped, held out, "
        "exited by reason (read-only; may run beside a worker)",
    )
    _config_args(status, state=True, state_required=False)
    status.add_argument("--journey", help="only this journey")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=cmd_journeys_status)
    trace = j_sub.add_parser("trace", help="one person's journeys: a timeline, instances in flight")
    _config_args(trace, state=True, state_required=False)
    trace.add_argument("--identity", required=True, help="NAMESPACE:VALUE")
    trace.add_argument("--json", action="store_true", help="one JSON object")
    trace.set_defaults(handler=cmd_journeys_trace)
    serve = sub.add_parser(
        "serve", help="profile lookups, decisions and the HTTP collector over the projection"
    )
    _config_args(serve)
    serve.add_argument("--host", help="address to listen on (default: serve.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: serve.port)")
    serve.set_defaults(handler=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve.server import Running  # noqa: PLC0415  (FastAPI only when serving)

    Running(
        settings_of(args), config_path=args.config, host=args.host, port=args.port
    ).serve_forever()
    return 0


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
    settings = settings_of(args)
    root = state_dir_of(args, settings)
    partitions: frozenset[str] = frozenset()
    if not args.files:  # refuse missing topics, say where each partition is read from
        partitions = startup.to_read(settings, startup.check_sources(settings, root))
    options = RunOptions(
        mode="files" if args.files else "replay",
        audience_out=args.audience_out,
        from_ts_ms=_parse_time(args.from_timestamp) if args.from_timestamp else None,
        workers=args.workers,
        recovery=settings.recovery.enabled,
        partitions=partitions,
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
    settings = settings_of(args)
    startup.check_sources(settings, state_dir_of(args, settings))
    options = RunOptions(
        mode="live",
        audience_out=args.audience_out,
        workers=args.workers,
        recovery=settings.recovery.enabled,
        **_cluster_options(args, state_dir_of(args, settings), False),
    )
    _run_flow(settings, options, addresses=args.addresses, reset_event_time=args.reset_event_time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
