"""The flow the Bytewax way: `python -m bytewax.run "flows.audience:build_flow()"`.

Reads the config named by `CDP_CONFIG`; `CDP_RUN_MODE` is `live` (default), `replay` or `files`.
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow

from config.settings import entry_from_env, load_settings
from flows import logs
from flows.options import RunOptions
from flows.pipeline import build_flow as _build


def build_flow(config: str | None = None, mode: str | None = None) -> Dataflow:
    logs.ensure_handler()
    entry = entry_from_env(config, mode)
    settings = load_settings(entry.config)
    # Recovery is bytewax.run's business here (-r / BYTEWAX_RECOVERY_DIRECTORY).
    options = RunOptions(mode=entry.mode, state_dir=settings.state_dir, recovery=entry.recovery)
    return _build(settings, options)
