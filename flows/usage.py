"""What every command of the CLI shares: its usage error, the settings and the state directory
of the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from config.settings import Settings, load_settings
from operators.engine import build_index


class UsageError(Exception):
    """A command line that cannot be run as given (exit 2, with the message)."""


def settings_of(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    build_index(settings)  # refuse bad rules and traits at start
    return settings


def state_dir_of(args: argparse.Namespace, settings: Settings) -> Path:
    given = getattr(args, "state_dir", None)
    return Path(given) if given is not None else settings.state_dir
