"""Shared fixtures: a Kafka-protocol broker for the session, unique topic names, sample data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import broker_from_env


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers: ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a local tansu broker."""
    with broker_from_env() as bootstrap:
        yield bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A prefix such as ``t1a2b3c4d.`` so each test gets its own topics on a shared broker."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture(scope="session")
def luma_dir() -> Path:
    """The shared Luma sample data set (``shared/data/luma`` beside the repository)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "luma"
    if not path.is_dir():
        pytest.skip(f"Luma sample data not found at {path} (expected shared/ beside the repo)")
    return path
