"""The Kafka broker's health as this process sees it, and one quiet voice for librdkafka.

Every Kafka client of the process (the sources' consumers, the sinks' producers) gets
`client_hooks(config)`: librdkafka's `error_cb` and `logger` then go through one `BrokerHealth`
per bootstrap address instead of stderr. While a broker is away librdkafka reports each failed
reconnect of each client (several a second per client: ~180 lines/s for one worker); here
those only raise a suspicion, a probe confirms it, and the log says "unreachable" once and
"back" once. Other librdkafka lines are rate-limited per kind. `/metrics` has `cdp_broker_up`
and `cdp_broker_errors_total{kind}`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from flows import logs
from operators import metrics

LOG = logging.getLogger("cdp.kafka")
# Errors that say "cannot talk to the broker" (not "the broker said no").
_CONNECTION_ERRORS = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
    }
)
# librdkafka log facilities that are about connections (summed up by the health lines).
_CONNECTION_FACILITIES = frozenset({"FAIL", "ERROR", "BROKERFAIL", "CONNECT", "REQTMOUT"})
_NUMBERS = re.compile(r"\d+")


def ensure_log_handler() -> None:
    logs.ensure_handler()


class RateLimit:
    """At most one line per kind per `every_s`; says how many were held back."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, now: float) -> int | None:
        """None: hold this line back; else how many of its kind were held back before it."""
        with self._lock:
            if len(self._last) > 10_000:  # kinds come from messages: keep the memory bounded
                self._last.clear()
            last = self._last.get(kind)
            if last is not None and now - last < self.every_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._held.pop(kind, 0)


class BrokerHealth:
    """Up, suspected or down. A connection error makes the broker suspect; a probe thread then
    asks for metadata every `probe_s` until it answers. Still no answer `grace_s` after the
    first error: down (logged once). An answer, or a delivery the broker acknowledged, after
    that: back (logged once). A consumed message only clears a suspicion: it may have been
    fetched before the broker went away."""

    def __init__(
        self, config: dict[str, str], *, grace_s: float = 3.0, probe_s: float = 1.0
    ) -> None:
        self.bootstrap = config.get("bootstrap.servers", "")
        self._probe_config: dict[str, Any] = {**config, "logger": DISCARD, "error_cb": ignore}
        self.grace_s = grace_s
        self.probe_s = probe_s
        self.up = True
        self.suspect_since: float | None = None
        self.down_since: float | None = None
        self.errors = 0  # connection errors since the last time it was up
        self.limit = RateLimit()
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None
        self.pending: dict[int, Any] = {}  # producers' unacknowledged counts, by producer id
        self.logger = _LibrdkafkaLog(self)
        metrics.BROKER_UP.set(1)

    @property
    def healthy(self) -> bool:
        """Up and not suspected: worth waiting for."""
        return self.up and self.suspect_since is None

    # -- signals from the clients ----------------------------------------------------------

    def error(self, err: KafkaError) -> None:
        """librdkafka's `error_cb` (called from the client's poll, on a worker thread)."""
        metrics.BROKER_ERRORS.labels(err.name()).inc()
        if err.code() in _CONNECTION_ERRORS:
            self.suspect()
            return
        held = self.limit.admit(f"error:{err.name()}", time.monotonic())
        if held is not None:
            level = logging.ERROR if err.fatal() else logging.WARNING
            LOG.log(level, "Kafka client error %s: %s%s", err.name(), err.str(), _held(held))

    def suspect(self) -> None:
        with self._lock:
            self.errors += 1
            if self.suspect_since is None:
                self.suspect_since = time.monotonic()
            if self._probe is None:
                self._probe = threading.Thread(target=self._probe_loop, daemon=True)
                self._probe.name = "cdp-broker-probe"
                self._probe.start()

    def consumed(self) -> None:
        """A source read something: the suspicion (if any, and not yet confirmed) is off."""
        if self.suspect_since is not None and self.up:
            with self._lock:
                if self.up:
                    self.suspect_since = None

    def acknowledged(self) -> None:
        """The broker acknowledged a delivery: it is up."""
        if self.suspect_since is not None or not self.up:
            self._back()

    # -- state changes -----------------------------------------------------------------------

    def _back(self) -> None:
        with self._lock:
            was_down, since, errors = not self.up, self.down_since, self.errors
            self.up, self.suspect_since, self.down_since, self.errors = True, None, None, 0
        metrics.BROKER_UP.set(1)
        if was_down:
            took = time.monotonic() - (since or time.monotonic())
            ensure_log_handler()
            LOG.warning(
                "Kafka broker back at %s after %.0f s (%d connection errors meanwhile); "
                "%d messages waiting for delivery go out now",
                self.bootstrap,
                took,
                errors,
                self.waiting(),
            )

    def _down(self) -> None:
        with self._lock:
            if not self.up:
                return
            self.up, self.down_since = False, self.suspect_since or time.monotonic()
        metrics.BROKER_UP.set(0)
        ensure_log_handler()
        LOG.warning(
            "Kafka broker unreachable at %s: the worker keeps running, Kafka sinks keep their "
            "messages and retry without end, sources resume where they were; "
            "other destinations keep receiving changes (cdp_broker_up is 0 until it is back)",
            self.bootstrap,
        )

    def waiting(self) -> int:
        return int(sum(self.pending.values()))

    def _probe_loop(self) -> None:
        admin = AdminClient(self._probe_config)
        while True:
            time.sleep(self.probe_s)
            with self._lock:
                if self.up and self.suspect_since is None:
                    self._probe = None  # cleared by a consumed message or a delivery
                    return
            try:
                admin.list_topics(timeout=max(self.probe_s, 1.0))
            except Exception:  # any failure to get metadata means "no answer"
                with self._lock:
                    since = self.suspect_since
                if since is not None and time.monotonic() - since >= self.grace_s:
                    self._down()
                continue
            self._back()
            with self._lock:
                self._probe = None
            return


class _LibrdkafkaLog(logging.Logger):
    """What librdkafka logs (confluent-kafka calls `log(level, "%s [%s] %s", facility, client,
    message)`): connection failures become a suspicion of the health, the rest is rate-limited
    per facility and message shape."""

    def __init__(self, health: BrokerHealth) -> None:
        super().__init__("cdp.kafka.librdkafka")
        self.parent = LOG
        self._health = health

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        facility = str(args[0]) if args else ""
        text = str(args[2]) if len(args) > 2 else str(msg)
        if facility in _CONNECTION_FACILITIES or "Connect to" in text or "brokers are down" in text:
            self._health.suspect()
            return
        held = self._health.limit.admit(f"{facility}:{_NUMBERS.sub('#', text)}", time.monotonic())
        if held is not None and level >= logging.INFO:
            ensure_log_handler()
            super().log(level, "librdkafka %s: %s%s", facility, text, _held(held))


def _held(count: int) -> str:
    return f" ({count} like it held back)" if count else ""


def ignore(_err: KafkaError) -> None:
    return None


DISCARD = logging.Logger("cdp.kafka.discard", level=logging.CRITICAL + 1)

_healths: dict[str, BrokerHealth] = {}
_healths_lock = threading.Lock()


def health_for(config: dict[str, str]) -> BrokerHealth:
    """The process's health of the broker at `config['bootstrap.servers']`."""
    bootstrap = config.get("bootstrap.servers", "")
    with _healths_lock:
        if not _healths:
            metrics.KAFKA_PENDING.set_function(lambda: sum(h.waiting() for h in _healths.values()))
        if bootstrap not in _healths:
            _healths[bootstrap] = BrokerHealth(config)
        return _healths[bootstrap]


def client_hooks(config: dict[str, str]) -> dict[str, Any]:
    """`error_cb` and `logger` for a librdkafka client of this broker (add to its config)."""
    health = health_for(config)
    return {"error_cb": health.error, "logger": health.logger}
