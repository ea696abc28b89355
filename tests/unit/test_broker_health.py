"""flows.broker: librdkafka's flood of connection lines becomes one "unreachable" and one
"back" line; other lines are rate-limited. The probe runs against a closed loopback port."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from flows import broker
from operators import metrics


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[list[str]]:
    handler = _Lines()
    broker.LOG.addHandler(handler)
    yield handler.lines
    broker.LOG.removeHandler(handler)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def test_rate_limit_lets_one_line_of_a_kind_through_per_interval() -> None:
    limit = broker.RateLimit(every_s=60)
    assert limit.admit("FAIL:x", 0.0) == 0
    assert limit.admit("FAIL:x", 1.0) is None
    assert limit.admit("FAIL:x", 2.0) is None
    assert limit.admit("other", 2.0) == 0
    assert limit.admit("FAIL:x", 61.0) == 2  # and says how many it held back


def test_a_flood_of_connection_errors_is_one_line_down_and_one_line_back(
    lines: list[str],
) -> None:
    health = broker.BrokerHealth(
        {"bootstrap.servers": f"127.0.0.1:{closed_port()}"}, grace_s=0.3, probe_s=0.1
    )
    for i in range(500):
        health.logger.log(
            logging.ERROR,
            "%s [%s] %s",
            "FAIL",
            "rdkafka#producer-1",
            f"127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: refused (after {i}ms)",
        )
    deadline = time.monotonic() + 15
    while health.up and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not health.up
    assert metrics.BROKER_UP._value.get() == 0
    for _ in range(100):  # more errors while down say nothing more
        health.logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "Connect to x failed")
    health.acknowledged()  # a delivery the broker acknowledged
    assert health.up and metrics.BROKER_UP._value.get() == 1
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "back" in lines[1]


def test_other_librdkafka_lines_are_rate_limited(lines: list[str]) -> None:
    health = broker.BrokerHealth({"bootstrap.servers": "127.0.0.1:9"})
    for i in range(50):
        health.logger.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "c", f"odd setting {i}")
    assert len(lines) == 1 and "CONFWARN" in lines[0]


def test_a_consumed_message_clears_a_suspicion_before_it_is_confirmed(lines: list[str]) -> None:
    health = broker.BrokerHealth(
        {"bootstrap.servers": f"127.0.0.1:{closed_port()}"}, grace_s=30, probe_s=0.1
    )
    health.suspect()
    health.consumed()
    time.sleep(0.5)
    assert health.up and health.suspect_since is None and not lines
