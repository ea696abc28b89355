"""`python -m benchmarks.engine` runs and is repeatable: the same stream gives the same
changes and timer firings (what a before/after comparison of a change relies on)."""

from __future__ import annotations

import orjson
import pytest

from benchmarks import engine


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert engine.main(["--profiles", "300", "--events", "1500", *args]) == 0
    result: dict[str, object] = orjson.loads(capsys.readouterr().out)
    return result


def test_engine_benchmark_is_repeatable(capsys: pytest.CaptureFixture[str]) -> None:
    first = _run(capsys)
    again = _run(capsys, "--batch", "37")  # batching changes nothing but the commits
    assert first["records"] == again["records"] and isinstance(first["records"], int)
    assert first["records"] > 1500
    assert first["changes"] == again["changes"] and isinstance(first["changes"], int)
    assert first["changes"] > 0
    assert first["timers_fired"] == again["timers_fired"]
    assert {"decode_s", "engine_s", "engine_cpu_s", "engine_records_per_s"} <= first.keys()
