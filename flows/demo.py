"""`cdp demo`: a generated Luma-like retail stream through the whole pipeline, with a summary."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from config.settings import SegmentSettings, Settings, load_settings
from flows import io
from flows.generator import generate, write_files
from flows.options import RunOptions
from flows.pipeline import build_flow
from flows.runtime import close_engines, engine_for, run_flow
from operators import queries
from operators.journey_status import profiles_with_state, tally
from operators.preview import preview
from operators.steps.positions import WATERMARK_KEY
from operators.store import open_store


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
        _print_journeys(settings, state_dir, workdir / "emails.jsonl")
        _edit(settings, state_dir, workdir / "edit-changes.jsonl")
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


def _print_journeys(settings: Settings, state_dir: Path, emails_file: Path) -> None:
    """The journeys' totals from the state, and one abandoned-cart email as it was sent."""
    store = open_store(state_dir, read_only=True)
    try:
        totals = tally(profiles_with_state(store)).totals
    finally:
        store.close()
    emails = _read_lines(emails_file)
    for journey in settings.journeys:
        n = totals.get(journey.id, {})
        exits = ", ".join(
            f"{count} {what.removeprefix('exited_')}"
            for what, count in sorted(n.items())
            if what.startswith("exited_")
        )
        print(
            f"  journey {journey.id}: {n.get('entered', 0)} entered "
            f"({n.get('held_out_entered', 0)} in the holdout)"
        )
        print(
            f"    sent {n.get('sent', 0)}, held out {n.get('held_out', 0)}, "
            f"capped {n.get('capped', 0)}, late {n.get('late', 0)}, "
            f"completed {n.get('completed', 0)}, exited: {exits or 'none'}"
        )
    sample = next((e for e in emails if (e.get("event") or {}).get("productListItems")), None)
    if sample is not None:
        name = (sample.get("attributes") or {}).get("person.name.firstName")
        items = [i.get("name") for i in sample["event"]["productListItems"]]
        print(f"    {len(emails)} emails written; one: {sample['message']} to {name}, cart {items}")
        print("    (cdp journeys status / trace show more; --keep keeps the state to try them)")


# The demo's audience edit (DESIGN §13): a rule never configured, previewed, then added while an
# audience is removed, and the next run rolls the edit out over the stored profiles.
ADDED = SegmentSettings(
    id="checkout-regulars",
    name="Started a checkout twice or more",
    rule='count(event.eventType == "commerce.checkouts") >= 2',
)
REMOVED = "engaged-browsers"


def _edit(settings: Settings, state_dir: Path, changes_file: Path) -> None:
    store = open_store(state_dir, read_only=True)
    try:
        watermark = store.get(WATERMARK_KEY)
        now = 0 if watermark is None else int(watermark) - settings.time.allowed_lateness_ms
        found = preview(store, settings, now, rule=ADDED.rule, sample=1)
    finally:
        store.close()
    edited = settings.model_copy(
        update={"segments": (*(s for s in settings.segments if s.id != REMOVED), ADDED)}
    )
    options = RunOptions(mode="files", state_dir=state_dir, audience_out=changes_file)
    try:
        run_flow(build_flow(edited, options), 1, state_dir / "recovery")
    finally:
        close_engines()
        io.close_files()
    rolled = _read_lines(changes_file)
    entered = sum(1 for c in rolled if c["reason"] == "definition" and c["status"] == "entered")
    removed = sum(1 for c in rolled if c["reason"] == "removed")
    print("  an audience edit, rolled out over the stored profiles (no input read again):")
    print(f"    preview of '{ADDED.rule}': {found.size} profiles")
    print(f"    added {ADDED.id}: {entered} entered (reason definition)")
    print(f"    removed {REMOVED}: {removed} exited (reason removed)")


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
