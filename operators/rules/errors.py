"""Rule errors as data: each names its segment and a 1-based column, and every problem in a
rule set is reported at once (a data engineer fixes a YAML file in one pass, not one per run).

Both pickle by their arguments (``__reduce__``) because worker processes send them back whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class RuleError(ValueError):
    """One problem in one rule, located by a 1-based column in the rule text."""

    def __init__(self, segment_id: str, column: int, message: str) -> None:
        super().__init__(f"segment {segment_id!r}, column {column}: {message}")
        self.segment_id = segment_id
        self.column = column
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.segment_id, self.column, self.message))


class RuleErrors(ValueError):
    """Every problem found in a set of rules (all segments are checked before raising)."""

    def __init__(self, errors: Iterable[RuleError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors,))


class TraitError(RuleError):
    """One problem in one trait's value (`traits:`), located like a rule's."""

    def __init__(self, name: str, column: int, message: str) -> None:
        super().__init__(name, column, message)
        self.args = (f"trait {name!r}, column {column}: {message}",)

    def __str__(self) -> str:
        return str(self.args[0])


class JourneyError(RuleError):
    """One problem in a journey's rule (`exit_when`, an `if` step, an event trigger), located
    by the journey, where in it, and a column."""

    def __init__(self, name: str, column: int, message: str) -> None:
        super().__init__(name, column, message)
        self.args = (f"journey {name}, column {column}: {message}",)

    def __str__(self) -> str:
        return str(self.args[0])
