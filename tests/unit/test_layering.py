"""The layering that import-linter cannot see (`lint-imports` checks the imports, see
pyproject.toml): only `config` reads the environment for configuration."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("flows", "operators", "schemas")


def reads_environment(tree: ast.AST) -> list[int]:
    """Lines that read `os.environ` / `os.getenv` (or `environ` / `getenv` imported bare)."""
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and {a.name for a in node.names} & {"environ", "getenv", "environb"}
        ):
            lines.append(node.lineno)
    return lines


def test_only_config_reads_the_environment() -> None:
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        for line in reads_environment(ast.parse(path.read_text(), str(path)))
    }
    assert found == set()


def test_the_check_sees_a_read() -> None:
    assert reads_environment(ast.parse("import os\nx = os.environ.get('A')")) == [2]
    assert reads_environment(ast.parse("from os import getenv")) == [1]
