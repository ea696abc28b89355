"""`cdp segments check`: every config check, every problem with its line, exit 1 on any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tests.helpers import ROOT

DEMO = (ROOT / "config" / "demo.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdp.yaml"
    path.write_text(text)
    return path


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["segments", "check", "--config", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", ["demo.yaml", "luma.yaml", "bench.yaml"])
def test_shipped_configs_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(ROOT / "config" / name, capsys)
    assert code == 0, err
    assert out.splitlines()[-1].endswith("destinations)") and err == ""


def test_every_typo_is_reported_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        DEMO.replace("crmId: CRMID\n      personalEmail", "crmId: CRMId\n      personalEmail")
        .replace(
            "  - {name: audiences, kind: file, path: audience-changes.jsonl}",
            "  - {name: audiences, kind: file, path: audience-changes.jsonl}\n"
            "  - {name: hook, kind: webhook, url: 'http://127.0.0.1:9/h',\n"
            "     identities: [Emial], segments: [abandoned-carts]}",
        )
        .replace('within="24h") >= 3', 'within="24q") >= 3')
    )
    code, out, err = check(write(tmp_path, text), capsys)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[-1] == f"4 problem(s) in {tmp_path / 'cdp.yaml'}"
    where = {
        "did you mean 'CRMID'?": line_of(text, "crmId: CRMId"),
        "did you mean 'Email'?": line_of(text, "identities: [Emial]"),
        "did you mean 'abandoned-cart'?": line_of(text, "identities: [Emial]"),
        "bad duration": line_of(text, 'within="24q"'),
    }
    for fragment, line in where.items():
        (hit,) = [x for x in lines if fragment in x]
        assert hit.startswith(f"{tmp_path / 'cdp.yaml'}: line {line}: "), hit
    assert line_of(text, "crmId: CRMId") > 15 and line_of(text, 'within="24q"') > 50


def test_a_bad_yaml_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(write(tmp_path, "namespaces: [\n"), capsys)
    assert code == 1 and "not valid YAML" in err


def test_the_command_line_itself(tmp_path: Path) -> None:
    path = write(tmp_path, DEMO.replace("- {name: ECID}", "- {name: ECID}\n  - {name: ECID}"))
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "segments", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    line = line_of(path.read_text(), "- {name: ECID}") + 1
    assert f"cdp.yaml: line {line}: namespaces.6.name: namespace 'ECID' is defined twice" in (
        done.stderr
    )
