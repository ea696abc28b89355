"""The flow the Bytewax way: `python -m bytewax.run "flows.audience:build_flow()"`.

Reads the config named by `CDP_CONFIG`; `CDP_RUN_MODE` is `live` (default), `replay` or `files`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, cast

from bytewax.dataflow import Dataflow

from config.settings import load_settings
from flows.pipeline import RunOptions
from flows.pipeline import build_flow as _build


def build_flow(config: str | None = None, mode: str | None = None) -> Dataflow:
    path = config or os.environ.get("CDP_CONFIG")
    if not path:
        raise ValueError("set CDP_CONFIG to the settings file (or pass config=...)")
    settings = load_settings(Path(path))
    chosen = cast(
        Literal["files", "replay", "live"], mode or os.environ.get("CDP_RUN_MODE", "live")
    )
    # Recovery is bytewax.run's business here (-r / BYTEWAX_RECOVERY_DIRECTORY).
    recovery = bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
    return _build(
        settings, RunOptions(mode=chosen, state_dir=settings.state_dir, recovery=recovery)
    )
