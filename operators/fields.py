"""Declared field types of a source (`fields:` in its settings), applied to a decoded body.

Pure: no I/O. Numeric strings become numbers (`"450.00"` -> 450.0), numbers sent for string
fields become strings, `"true"`/`"false"` become booleans; anything else of the wrong type is a
problem whose text names the field, never the value (decode makes it a dead letter). Paths go
through lists as rule paths do (`productListItems.priceTotal` reaches every item); missing and
null values are left alone.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from config.settings import FieldType

FieldSpec = tuple[tuple[str, ...], str, FieldType]  # (path, dotted path, type)

_EXPECTED: dict[str, str] = {
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "timestamp": "an ISO-8601 string or an epoch number",
}
_NUMBER_CHARS = frozenset("0123456789+-.eE")


class _Wrong(Exception):
    """A declared field holds a value of another type (internal: becomes the returned text)."""


def coerce_fields(body: dict[str, Any], fields: tuple[FieldSpec, ...]) -> str | None:
    """Give every declared field its type, in place (the body is decode's own freshly parsed
    dict). Returns None, or the first problem: "field a.b must be a number"."""
    for path, dotted, kind in fields:
        try:
            _coerce(body, path, kind)
        except _Wrong:
            return f"field {_printable(dotted)} must be {_EXPECTED[kind]}"
    return None


def _coerce(node: Any, path: tuple[str, ...], kind: FieldType) -> None:
    if type(node) is list:
        for item in node:
            _coerce(item, path, kind)
        return
    if type(node) is not dict or path[0] not in node:
        return
    if len(path) > 1:
        _coerce(node[path[0]], path[1:], kind)
        return
    node[path[0]] = _typed(node[path[0]], kind)


def _typed(value: Any, kind: FieldType) -> Any:
    if value is None:
        return None
    if type(value) is list:
        return [_typed(item, kind) for item in value]
    return _convert(value, kind)


def _convert(value: Any, kind: FieldType) -> Any:
    """Only lossless conversions; `_Wrong` for anything else."""
    if isinstance(value, bool):
        if kind != "boolean":
            raise _Wrong
        return value
    if kind == "boolean":
        text = value.strip().lower() if isinstance(value, str) else ""
        if text not in ("true", "false"):
            raise _Wrong
        return text == "true"
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and math.isfinite(value):
            return str(value)  # ids and zip codes sent as numbers
        raise _Wrong
    if kind == "timestamp":
        return _timestamp(value)
    number = _number(value)
    if kind == "integer" and isinstance(number, float):
        if not number.is_integer():
            raise _Wrong
        return int(number)
    return number


def _number(value: Any) -> int | float:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Wrong
        return value
    if not isinstance(value, str):
        raise _Wrong
    text = value.strip()
    # int() of thousands of digits raises; no one means such a number. "1,234.50" is refused
    # rather than guessed (a comma is a decimal point in half of Europe).
    if not text or len(text) > 64 or not _NUMBER_CHARS.issuperset(text):
        raise _Wrong
    if text.lstrip("+-").isdigit():
        return int(text)
    try:
        number = float(text)
    except ValueError:
        raise _Wrong from None
    if not math.isfinite(number):
        raise _Wrong
    return number


def _timestamp(value: Any) -> Any:
    """Checked, not converted: decode's own time rules apply to `timestamp`, not to these."""
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Wrong
        return value
    if not isinstance(value, str):
        raise _Wrong
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise _Wrong from None
    return value


def _printable(name: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in name)
    return text if len(text) <= 64 else text[:61] + "..."
