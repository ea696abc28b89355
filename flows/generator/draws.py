"""Seeded draws: a fast pick, and the ids real feeds carry (ECIDs, event ids, order numbers).

Every draw takes the one `random.Random` of the run, never the module-level `random`, the OS or
the clock, so a seed gives the same stream on every machine.
"""

from __future__ import annotations

import random
from typing import TypeVar

_T = TypeVar("_T")


def pick(rng: random.Random, items: tuple[_T, ...]) -> _T:
    """`rng.choice` without its overhead (the same for every Python, and fast)."""
    return items[int(rng.random() * len(items))]


def ecid(rng: random.Random) -> str:
    """An Experience Cloud ID: 38 digits."""
    return f"{rng.getrandbits(126):038d}"


def uuid(rng: random.Random) -> str:
    """A version-4-shaped id from the seeded generator (uuid.uuid4 would read the OS)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def purchase_id(rng: random.Random) -> str:
    """Like the store export's `805-472-642-1090`."""
    digits = f"{rng.getrandbits(44):013d}"[-13:]
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:9]}-{digits[9:]}"
