"""`python -m benchmarks.engine` runs and is repeatable: the same stream gives the same
changes and timer firings (what a before/after comparison of a change relies on); with
`--history on off` it compares the event history on and off, with `--journeys on off` the
bench journeys."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from benchmarks import engine
from benchmarks.common import (
    ROOT,
    SEND_DESTINATIONS,
    bench_config,
    history_overrides,
    journeys_config,
    sends_written,
)
from config.settings import HistorySettings, load_settings


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


def test_engine_benchmark_compares_history_on_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run(capsys, "--history", "on", "off", "--repeat", "2")
    runs = result["runs"]
    assert isinstance(runs, list)
    assert [r["history"] for r in runs] == ["on", "off", "off", "on"]  # order alternates
    on = [r for r in runs if r["history"] == "on"]
    off = [r for r in runs if r["history"] == "off"]
    assert all(r["history_events"] == result["events"] for r in on)  # nothing trimmed here
    assert all(r["history_events"] == 0 for r in off)
    cost = result["history_cost"]
    assert isinstance(cost, dict)
    assert cost["same_changes"] is True  # the history changes no audience
    assert cost["state_mb_compacted_on"] > cost["state_mb_compacted_off"]
    assert {"us_per_record", "percent", "state_mb_per_100k_events"} <= cost.keys()


def test_history_modes_become_config_overrides() -> None:
    key = "profile.history.max_events"
    assert history_overrides(None, "on") == {}  # the default is on
    assert history_overrides(200, "on") == {}
    assert history_overrides(0, "on") == {key: HistorySettings().max_events}
    assert history_overrides(200, "off") == {key: 0}
    with pytest.raises(ValueError):
        history_overrides(None, "maybe")


def test_bench_config_turns_the_history_on_or_off(tmp_path: Path) -> None:
    base = ROOT / "config" / "bench.yaml"
    for mode, kept in (("on", HistorySettings().max_events), ("off", 0), (None, 5000)):
        path = bench_config(base, tmp_path / f"{mode}.yaml", "x.", "127.0.0.1:9", mode)
        assert load_settings(path).profile.history.max_events == kept


def test_engine_benchmark_compares_journeys_on_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    """The bench journeys send on the bench data (dated long before the benchmark's wall clock:
    `late: send`), and change no audience."""
    result = _run(capsys, "--journeys", "on", "off", "--repeat", "2")
    runs = result["runs"]
    assert isinstance(runs, list)
    assert [r["journeys"] for r in runs] == ["on", "off", "off", "on"]  # order alternates
    assert all(r["journey_sends"] > 0 for r in runs if r["journeys"] == "on")
    assert all(r["journey_sends"] == 0 for r in runs if r["journeys"] == "off")
    assert len({r["journey_sends"] for r in runs if r["journeys"] == "on"}) == 1
    cost = result["journey_cost"]
    assert isinstance(cost, dict)
    assert cost["same_changes"] is True
    assert {"us_per_record", "percent", "journey_sends_on"} <= cost.keys()
    on = next(r for r in runs if r["journeys"] == "on")
    assert on["journey_outcomes"]["sent"] == on["journey_sends"]
    assert on["journey_outcomes"]["entered"] > 0
    with pytest.raises(SystemExit):
        engine.main(["--history", "on", "--journeys", "on"])


def test_journeys_config_adds_the_bench_journeys(tmp_path: Path) -> None:
    path = journeys_config(ROOT / "config" / "bench.yaml", tmp_path / "j.yaml", tmp_path / "s")
    settings = load_settings(path)
    assert [j.id for j in settings.journeys] == ["cart-reminder", "cart-rescue"]
    sends = {d.name: d for d in settings.destinations if d.name in SEND_DESTINATIONS}
    assert set(sends) == set(SEND_DESTINATIONS)
    assert all(d.kind == "file" and d.segments == () for d in sends.values())
    assert all(j.late == "send" for j in settings.journeys)
    assert sends_written(tmp_path / "s") == 0
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "email.jsonl").write_bytes(b'{"id": "a"}\n{"id": "b"}\n')
    assert sends_written(tmp_path / "s") == 2
