"""`cdp journeys status` and `cdp journeys trace`: what the journeys did, read from a state
directory (read-only; may run beside a worker)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

import orjson

from flows.commands import _normalised, _open_read, _state_now
from flows.usage import UsageError
from operators import journey_status as js
from operators import queries
from operators.identity import profile_id
from operators.steps.profiles import profile_key
from operators.store import decode
from schemas.records import iso_ms


def cmd_journeys_status(args: argparse.Namespace) -> int:
    settings, store, _ = _open_read(args)
    try:
        now = _state_now(store, settings)
        counted = js.tally(js.profiles_with_state(store))
        found = js.statuses(counted, settings.journeys, js.labels_reader(store, settings.journeys))
    finally:
        store.close()
    if args.journey is not None:
        found = [s for s in found if s.id == args.journey]
        if not found:
            raise UsageError(f"no journey {args.journey!r} in the config or the state")
    if args.json:
        doc = {
            "event_time": iso_ms(now),
            "profiles": counted.profiles,
            "journeys": [s.to_json() for s in found],
        }
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
        return 0
    print(f"state at event time {iso_ms(now)}; {counted.profiles} profiles were in journeys")
    if not found:
        print("no journey in the config or the state")
    for status in found:
        print("\n".join(render_status(status)))
    return 0


def render_status(status: js.JourneyStatus) -> list[str]:
    if status.configured:
        head = f"journey {status.id}  (version {status.version})"
    else:
        head = f"journey {status.id}  (removed from the config: its instances end when they wake)"
    t = status.totals
    out = [
        head,
        f"  entered {t.get('entered', 0)} (held out {t.get('held_out_entered', 0)}), "
        f"completed {t.get('completed', 0)}, re-entry refused {t.get('reentry_refused', 0)}",
        f"  in flight {status.in_flight}",
    ]
    for w in status.waiting:
        edited = "" if w.version == status.version else f" (on version {w.version})"
        wake = _span(w.first_wake_ms, w.last_wake_ms)
        out.append(f"    {w.instances} waiting before {w.step}{edited}, wake {wake}: {w.label}")
    outcomes = status.send_outcomes
    out.append("  sends: " + ", ".join(f"{_words(o)} {t.get(o, 0)}" for o in outcomes))
    out += _table(
        [
            (
                f"    {step}",
                *(f"{_words(o)} {counts.get(o, 0)}" for o in outcomes),
                status.labels.get(step, ""),
            )
            for step, counts in status.steps.items()
        ]
    )
    exited = ", ".join(f"{reason} {n}" for reason, n in sorted(status.exited.items()))
    out.append(f"  exited: {exited or 'none'}")
    return out


def _span(first: int | None, last: int | None) -> str:
    if first is None or last is None:
        return "-"
    return iso_ms(first) if first == last else f"{iso_ms(first)} .. {iso_ms(last)}"


def _words(outcome: str) -> str:
    return outcome.replace("_", " ")


def cmd_journeys_trace(args: argparse.Namespace) -> int:
    settings, store, shards = _open_read(args)
    try:
        identity = _normalised(settings, args.identity)
        canonical = queries.canonical_of(store, shards, identity)
        raw = None if canonical is None else store.get(profile_key(canonical, shards))
        if canonical is None or raw is None:
            # The namespace only: an identity value is personal data.
            print(f"cdp: no profile holds that {identity[0]}", file=sys.stderr)
            return 1
        labels = js.labels_reader(store, settings.journeys)
        found = js.trace(profile_id(canonical), decode(raw).get("j"), labels)
    finally:
        store.close()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(found.to_json()) + b"\n")
        return 0
    print("\n".join(render_trace(found)))
    return 0


def render_trace(found: js.Trace) -> list[str]:
    if not found.lines and not found.in_flight:
        return [f"profile {found.profile_id}: in no journey"]
    kept = f" (the newest {len(found.lines)} are kept)" if found.trimmed else ""
    out = [f"profile {found.profile_id}: {len(found.lines)} lines{kept}"]
    out += _table(
        [(iso_ms(x.ms), x.journey, x.instance[:8], x.what, x.step, x.detail) for x in found.lines]
    )
    if found.in_flight:
        out.append("in flight:")
        out += _table(
            [
                (
                    f"  {i.journey}",
                    i.instance[:8],
                    f"key {i.key}" if i.key else "",
                    f"next {i.step}",
                    f"wakes {iso_ms(i.wakes_ms)}" if i.wakes_ms is not None else "",
                    ("held out; " if i.held_out else "") + i.label,
                )
                for i in found.in_flight
            ]
        )
    out.append("totals: " + "; ".join(_totals(found.totals)))
    return out


def _totals(totals: Mapping[str, Mapping[str, int]]) -> list[str]:
    return [
        f"{journey} " + ", ".join(f"{_total_words(what)} {n}" for what, n in counts.items())
        for journey, counts in totals.items()
    ]


def _total_words(what: str) -> str:
    """`held out`, but `exited exit_when` (a reason as the config and `--json` spell it)."""
    if what.startswith("exited_"):
        return f"exited {what.removeprefix('exited_')}"
    return _words(what)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell (the last one not)."""
    if not rows:
        return []
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]
