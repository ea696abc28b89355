"""`cdp redeliver`: deliver what a webhook destination's spool holds, now, with no worker
running (a running worker holds the spool and re-delivers it by itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.settings import DestinationSettings, Settings
from flows.webhook import WebhookDestination
from flows.write import dead_letter_writer


@dataclass
class Outcome:
    delivered: int = 0
    refused: int = 0  # the endpoint answered no for good: written to the dead letters
    delivered_before: int = 0  # by an earlier run that stopped half-way: not sent again
    left: int = 0  # could not be delivered: still in the spool
    spools: int = 0  # spool files found (one per process of the state)


def spool_dirs(state_dir: Path) -> list[Path]:
    """The spool folder of a state, and those of its processes (`-i/-a` runs)."""
    return [state_dir / "spool", *sorted(state_dir.glob("process-*/spool"))]


def webhook(settings: Settings, name: str) -> DestinationSettings:
    """The webhook destination called `name` (ValueError if there is none)."""
    for dest in settings.destinations:
        if dest.name == name:
            if dest.kind != "webhook":
                raise ValueError(f"destination {name!r} is a {dest.kind}: only webhooks spool")
            return dest
    known = ", ".join(d.name for d in settings.destinations if d.kind == "webhook") or "none"
    raise ValueError(f"no destination {name!r} in the config (webhooks: {known})")


def redeliver(settings: Settings, name: str, state_dir: Path) -> Outcome:
    """Each spool of the destination in turn, in order per profile, each change once.
    Raises `flows.spool.SpoolBusy` if a worker holds one."""
    dest = webhook(settings, name)
    outcome = Outcome()
    for folder in spool_dirs(state_dir):
        if not (folder / f"{name}.jsonl").exists():
            continue
        outcome.spools += 1
        # the process's ledger of delivered journey sends, next to its spool
        ledger = folder.parent / "delivered"
        hook = WebhookDestination(dest, dead_letter_writer(settings), folder, ledger)
        try:
            assert hook.spool is not None
            outcome.delivered_before += hook.spool.delivered_before
            done = hook.redeliver()
            outcome.delivered_before += done.already
            outcome.delivered += done.delivered
            outcome.refused += done.refused
            outcome.left += hook.spool.count
        finally:
            hook.close(last_try=False)
    return outcome
