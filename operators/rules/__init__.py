"""The segment rule language (DESIGN §5): parsed once with lark, checked, compiled to closures.

Nothing here evaluates text as Python: the lark tree becomes a small AST, the AST is checked
(every error gets the segment id and a column) and turned into nested closures.

Semantics, where DESIGN §5 leaves a choice:

* Paths: ``profile.a.b`` / ``event.a.b``. Each step looks a key up in every object reached so
  far; a list met on the way (or at the leaf) is flattened, recursively, so a path yields a flat
  list of values. JSON ``null`` is the same as missing: it yields nothing. There is no indexing
  (``items.0`` looks up the key ``"0"``).
* A comparison is true when ANY left value and ANY right value pass. A side with no value
  (missing, null) makes every comparison false, ``!=`` included. Values of different kinds
  (string, number, bool, other) never compare: ``1 == true``, ``"1" == 1`` and ``"a" < 1`` are
  false, never an exception. ``int`` and ``float`` are both numbers (``1 == 1.0``).
* ``X == null`` is true when X yields no value (missing or null); ``X != null`` is its negation.
  ``null`` with any other operator is a compile error.
* ``in``: the right side is a list literal or a path; true when a left value equals one of the
  right values. ``contains``: a left value equals the right value, or both are strings and the
  right is a substring of the left (paths are flattened, so a list-valued path contains its
  elements). ``startswith``: strings only.
* ``iequals``, ``icontains``, ``istartswith``: ``==``, ``contains`` and ``startswith`` on strings
  compared without regard to case (Unicode case folding); strings only on both sides. Exact
  matching stays the default (``eventType`` values are case-sensitive by design).
* ``last`` skips matching events without a value at its path: it is the last known value.
* Column numbers are 1-based character offsets in the rule text (the column for a one-line rule).

The modules, in the order a rule goes through them:

* ``grammar``  the lark grammar and parser, and how its tokens are named in errors
* ``parse``    rule text → AST, or a syntax problem at an offset
* ``nodes``    the AST and its canonical text (which names aggregate state)
* ``check``    static types and signatures: the problems found before a rule runs
* ``compile``  one rule's AST → closures (``Check`` trees), errors collected
* ``compare``  the runtime comparisons those closures make
* ``paths``    reading values out of events and profiles
* ``compiled`` what compiling produces (``CompiledRule``, ``Aggregate``, ``Absent``) and
  ``explain``
* ``ruleset``  a whole set: duplicates, ``in_segment`` cycles, evaluation order
* ``duration``, ``errors``  durations (``within="7d"``) and RuleError/RuleErrors

Other modules import from ``operators.rules`` only (the names below).
"""

from operators.rules.compiled import Absent, Aggregate, CompiledRule, EvalContext, ExplainLine
from operators.rules.duration import parse_duration
from operators.rules.errors import JourneyError, RuleError, RuleErrors, TraitError
from operators.rules.paths import event_values
from operators.rules.ruleset import (
    compile_condition,
    compile_event_condition,
    compile_rules,
    compile_traits,
    definition_hash,
)

__all__ = [
    "Absent",
    "Aggregate",
    "CompiledRule",
    "EvalContext",
    "ExplainLine",
    "JourneyError",
    "RuleError",
    "RuleErrors",
    "TraitError",
    "compile_condition",
    "compile_event_condition",
    "compile_rules",
    "compile_traits",
    "definition_hash",
    "event_values",
    "parse_duration",
]
