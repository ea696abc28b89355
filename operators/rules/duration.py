"""Durations in rules and config (``within="7d"``), parsed strictly and printed canonically.

The canonical spelling matters beyond display: it is part of an aggregate's canonical text,
hence of its state key, so ``"24h"`` and ``"1d"`` must share one aggregate.
"""

from __future__ import annotations

import re

_UNIT_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_UNIT_ORDER = ("w", "d", "h", "m", "s", "ms")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> int:
    """``"30m"``, ``"1h"``, ``"7d"``, ``"1h30m"`` → milliseconds (units ms s m h d w, largest
    first, each at most once, no spaces). ValueError when malformed or not positive."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"bad duration {text!r}: expected e.g. '30m', '1h', '7d'")
    pos, total, rank = 0, 0, -1
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(
                f"bad duration {text!r}: expected a number and a unit (ms s m h d w), e.g. '7d'"
            )
        unit_rank = _UNIT_ORDER.index(m.group(2))
        if unit_rank <= rank:
            raise ValueError(f"bad duration {text!r}: units go from largest to smallest, once each")
        rank = unit_rank
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if total <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than zero")
    return total


def format_duration(ms: int) -> str:
    """The canonical spelling: ``"24h"`` and ``"1d"`` both become ``"1d"``."""
    for unit in _UNIT_ORDER:
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"  # pragma: no cover - "ms" always divides
