"""The project's log lines: one stderr handler on the `cdp` logger, which every module's logger
(`cdp.kafka`, `cdp.destinations`, …) reaches. Lines name topics, destinations and counts, never
identity values or record bodies."""

from __future__ import annotations

import logging
import sys
from typing import Any

ROOT = logging.getLogger("cdp")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is written (not when it was made)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def ensure_handler() -> None:
    """Idempotent: the CLI and every long-lived sink call it, whoever comes first."""
    if not any(isinstance(h, _Stderr) for h in ROOT.handlers):
        handler = _Stderr()
        handler.setFormatter(
            logging.Formatter("%(asctime)s cdp %(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
        ROOT.addHandler(handler)
        ROOT.setLevel(logging.INFO)
