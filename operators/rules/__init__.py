"""The segment rule language (DESIGN §5): the public API, re-exported from its modules."""

from operators.rules.compile import (
    Absent,
    Aggregate,
    CompiledRule,
    EvalContext,
    ExplainLine,
    RuleError,
    RuleErrors,
    compile_rules,
    event_values,
    parse_duration,
)

__all__ = [
    "Absent",
    "Aggregate",
    "CompiledRule",
    "EvalContext",
    "ExplainLine",
    "RuleError",
    "RuleErrors",
    "compile_rules",
    "event_values",
    "parse_duration",
]
