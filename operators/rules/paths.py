"""Reading values for rules: ``profile.a.b`` / ``event.a.b`` paths, as flat lists of values.

Each step looks a key up in every object reached so far; a list met on the way (or at the leaf)
is flattened, recursively, so a path yields a flat list. JSON ``null`` is the same as missing: it
yields nothing. There is no indexing (``items.0`` looks up the key ``"0"``). Every getter runs
once per event per filter on the hot path, hence the ``type(x) is`` tests before ``isinstance``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

# A getter yields the values a rule reads (from an event, or from a profile via the context);
# a predicate is a compiled condition over the same input.
Getter: TypeAlias = Callable[[Any], list[Any]]
Predicate: TypeAlias = Callable[[Any], bool]


def _flatten_into(out: list[Any], items: Iterable[Any]) -> None:
    for item in items:
        if item is None:
            continue
        kind = type(item)
        if kind is list or kind is tuple or isinstance(item, (list, tuple)):
            _flatten_into(out, item)
        else:
            out.append(item)


def _walk(obj: Any, parts: tuple[str, ...]) -> list[Any]:
    current: list[Any] = [obj]
    for part in parts:
        found: list[Any] = []
        for item in current:
            if type(item) is dict or isinstance(item, Mapping):
                value = item.get(part)
                if value is None:
                    continue
                kind = type(value)
                if kind is list or kind is tuple or isinstance(value, (list, tuple)):
                    _flatten_into(found, value)
                else:
                    found.append(value)
        if not found:
            return found
        current = found
    return current


@functools.lru_cache(maxsize=4096)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def event_values(event: Mapping[str, Any], path: str) -> list[Any]:
    """The values of ``event.<path>`` (``path`` without ``event.``): flattened through lists,
    nulls dropped, ``[]`` when missing."""
    return _walk(event, _split(path))


def event_getter(parts: tuple[str, ...]) -> Getter:
    if len(parts) == 1:
        key = parts[0]

        def get_one(event: Any) -> list[Any]:
            value = event.get(key)
            if value is None:
                return []
            kind = type(value)
            if kind is str or kind is int or kind is float:
                return [value]
            if isinstance(value, (list, tuple)):
                out: list[Any] = []
                _flatten_into(out, value)
                return out
            return [value]

        return get_one
    return lambda event: _walk(event, parts)


_MAX_INT = 2**63  # orjson stores 64-bit integers only
_MAX_FLOAT = 1e300  # keeps exact float sums away from overflow


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return bool(-_MAX_INT <= value < _MAX_INT)
    if kind is float:
        return math.isfinite(value) and abs(value) < _MAX_FLOAT
    return False


def profile_getter(path: str) -> Getter:
    def get(ctx: Any) -> list[Any]:
        values: list[Any] = ctx.profile_values(path)
        if None in values:
            return [v for v in values if v is not None]
        return values

    return get


def numbers_of(get: Getter) -> Callable[[Mapping[str, Any]], list[Any]]:
    low_int, high_int, limit = -_MAX_INT, _MAX_INT, _MAX_FLOAT

    def numbers(event: Mapping[str, Any]) -> list[Any]:
        # _is_number inlined: `-limit < v < limit` is false for nan and the infinities too.
        return [
            v
            for v in get(event)
            if (type(v) is int and low_int <= v < high_int)
            or (type(v) is float and -limit < v < limit)
        ]

    return numbers
