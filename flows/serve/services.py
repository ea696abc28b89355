"""What the routes of `cdp serve` are given (FastAPI's `app.state`; no module-level state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from config.settings import ApiKey, Settings
from flows.serve.collect import Collector
from flows.serve.follow import Follower
from flows.serve.metrics import ServeMetrics
from operators.decode import Decoder
from operators.identity import IdentityRules
from operators.offers import Offer
from operators.store import Store


@dataclass
class Services:
    """Built once at start by `flows.serve.server.Running`."""

    settings: Settings
    store: Store
    follower: Follower
    offers: Mapping[str, Sequence[Offer]]
    keys: Sequence[ApiKey]
    metrics: ServeMetrics
    access_log: bool = False
    collector: Collector | None = None

    def __post_init__(self) -> None:
        self.rules = IdentityRules.from_settings(self.settings)
        self.decoder = Decoder.from_settings(self.settings)

    def producer(self) -> Collector:
        """Made on the first collect: a server that only answers lookups needs no broker."""
        if self.collector is None:
            serve = self.settings.serve
            timeout = 5000 if serve is None else serve.delivery_timeout_ms
            self.collector = Collector(self.settings.kafka.client_config(), timeout)
        return self.collector
