"""Exact sums independent of arrival order: integers add exactly and floats are kept as
Shewchuk partials (the non-overlapping floats ``math.fsum`` uses) whose exact total is rounded
once when the value is read. A state is ``(int_total, float_partials)``, plain JSON.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

# An integer total this large moves into the float partials (orjson stores 64 bits).
SPILL = 2**62


def fadd(partials: list[float], x: float) -> list[float]:
    """Shewchuk's algorithm (``math.fsum``): partials whose exact sum is sum + x."""
    out: list[float] = []
    for partial in partials:
        y = partial
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            out.append(lo)
        x = hi
    out.append(x)
    return out


def sum_add(total: int, partials: list[float], values: list[Any]) -> tuple[int, list[float]]:
    for value in values:
        if type(value) is int:
            total += value
        else:
            partials = fadd(partials, float(value))
    if abs(total) >= SPILL:
        # Far beyond any real amount; keeps the state storable at the cost of exactness.
        partials = fadd(partials, float(total))
        total = 0
    return total, partials


def sum_merge(
    a_total: int, a_partials: list[float], b_total: int, b_partials: list[float]
) -> tuple[int, list[float]]:
    partials = list(a_partials)
    for p in b_partials:
        partials = fadd(partials, p)
    return sum_add(a_total + b_total, partials, [])


def sum_result(total: int, partials: list[float]) -> int | float:
    """The exact total rounded once; an int when no float was ever added."""
    if not partials:
        return total
    as_float = float(total)
    if int(as_float) == total:
        return math.fsum([*partials, as_float])
    exact = Fraction(total) + sum((Fraction(p) for p in partials), Fraction(0))
    return float(exact)
