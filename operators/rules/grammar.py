"""The rule grammar (lark, LALR) and the names its terminals get in error messages.

LALR rather than Earley: rules are compiled at start-up and by ``cdp segments check``, and an
LALR parser reports the expected tokens that the error messages list. ``PATH`` has priority 2
so that ``profile.x`` lexes as one path, not a name followed by a dot.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from lark import Lark

_GRAMMAR = r"""
?start: rule
?rule: or_expr
?or_expr: and_expr ("or" and_expr)*
?and_expr: not_expr ("and" not_expr)*
?not_expr: "not" not_expr -> neg
         | atom
?atom: "(" rule ")"
     | cmp
     | bare
cmp: value op value
bare: value
!op: "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "contains" | "startswith"
   | "iequals" | "icontains" | "istartswith"
?value: path | name | literal | call
path: PATH
name: NAME
call: NAME "(" [arg ("," arg)*] ")"
?arg: rule | kwarg
kwarg: NAME "=" rule
?literal: string | number | const | list
string: STRING
number: NUMBER
!const: "true" | "false" | "null"
list: "[" [literal ("," literal)*] "]"
STRING: /"(?:[^"\\\n]|\\.)*"/ | /'(?:[^'\\\n]|\\.)*'/
NUMBER: /-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?/
PATH.2: /[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
%ignore /\s+/
"""

_TERMINAL_NAMES = {
    "STRING": "a string",
    "NUMBER": "a number",
    "PATH": "a path",
    "NAME": "a name",
    "$END": "the end of the rule",
}


@functools.cache
def parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def describe_expected(names: Iterable[str]) -> str:
    shown: set[str] = set()
    terminals = {t.name: t for t in parser().terminals}
    for name in names:
        if name in _TERMINAL_NAMES:
            shown.add(_TERMINAL_NAMES[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            shown.add(repr(terminals[name].pattern.value))
    return ", ".join(sorted(shown))
