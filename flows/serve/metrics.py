"""The server's metrics, in a registry of its own (several servers may share a process in
tests); `/metrics` shows them with the process-wide ones (`cdp_broker_up`, …)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cdp_serve_requests",
            "HTTP requests, by route template and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cdp_serve_request_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.documents = Counter(
            "cdp_serve_projection_documents",
            "Projection records read: applied, stale (an older re-sent one) or bad",
            ["outcome"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "cdp_serve_projection_lag_seconds",
            "Wall clock minus updated_at of the last projection document applied",
            registry=self.registry,
        )
        self.collected = Counter(
            "cdp_serve_collected_records",
            "Records posted to /v1/collect, by source and outcome (accepted, refused, unsent)",
            ["source", "outcome"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(_PROCESS)


# The process-wide metrics that concern a server: its view of the Kafka broker (collect, and
# the projection topic).
_PROCESS = REGISTRY.restricted_registry(
    ["cdp_broker_up", "cdp_broker_errors_total", "cdp_kafka_pending_messages"]
)
