"""The Bytewax way in: `python -m bytewax.run "flows.audience:build_flow()"` with `CDP_CONFIG`."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, entry_from_env
from flows.audience import build_flow

ROOT = Path(__file__).resolve().parents[2]


def test_the_entry_reads_the_environment_once_in_config() -> None:
    env = {"CDP_CONFIG": "c.yaml", "CDP_RUN_MODE": "replay", "BYTEWAX_RECOVERY_DIRECTORY": "/r"}
    entry = entry_from_env(None, None, env)
    assert (entry.config, entry.mode, entry.recovery) == (Path("c.yaml"), "replay", True)
    assert entry_from_env("x.yaml", "files", {}).mode == "files"
    assert entry_from_env("x.yaml", None, {}).mode == "live"
    with pytest.raises(ConfigError, match="CDP_CONFIG"):
        entry_from_env(None, None, {})
    with pytest.raises(ConfigError, match="CDP_RUN_MODE"):
        entry_from_env("x.yaml", "batch", {})


def test_build_flow_makes_the_dataflow_without_side_effects() -> None:
    flow = build_flow(str(ROOT / "config" / "luma.yaml"), "files")
    assert flow.flow_id == "cdp"
