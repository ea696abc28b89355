"""Prometheus metrics, on the default registry that Bytewax serves at `/metrics` when
`BYTEWAX_DATAFLOW_API_ENABLED=true` (port `BYTEWAX_DATAFLOW_API_PORT`, default 3030)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECORDS_IN = Counter("cdp_records_in", "Records read, by source", ["source"])
DEAD_LETTERS = Counter("cdp_dead_letters", "Records sent to the dead letters", ["source", "reason"])
APPLIED = Counter("cdp_records_applied", "Records applied to the state")
REPLAYED = Counter("cdp_records_replayed", "Re-delivered records skipped by their offset")
DUPLICATES = Counter("cdp_duplicate_events", "Events skipped because their _id was applied")
FORGOTTEN = Counter("cdp_forgotten_records", "Records of deleted people dropped (tombstones)")
LINKS = Counter("cdp_identity_links", "Unions of two clusters (new identities included)")
REFUSED = Counter("cdp_refused_links", "Links refused by an identity rule", ["rule"])
CLUSTER_SIZE = Histogram(
    "cdp_cluster_size",
    "Identities in a cluster after a link",
    buckets=(1, 2, 3, 5, 8, 13, 21, 50, 100),
)
UPGRADED = Counter(
    "cdp_profiles_upgraded", "Profiles brought to edited audience definitions (rollout)"
)
CHANGES = Counter("cdp_audience_changes", "Audience changes", ["segment", "status"])
TIMERS = Counter("cdp_timers_fired", "Window timers fired")
JOURNEY_SEND_DELAY = Histogram(
    "cdp_journey_send_delay_seconds",
    "A journey send made: wall clock minus when its step was due (event time)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 60, 300, 3600),
)
JOURNEYS = Counter(
    "cdp_journey_steps",
    "Journey instances entered, completed, exited (by reason) and steps sent, late, capped or"
    " held out, by journey and step",
    ["journey", "step", "outcome"],
)
PROFILE_DOCUMENTS = Counter(
    "cdp_profile_documents",
    "Profile documents made for the projection (`profiles` destinations), by kind",
    ["kind"],  # live, merged, deleted
)
DELETES = Counter("cdp_deleted_profiles", "Clusters deleted (GDPR)")
LATENCY = Histogram(
    "cdp_pipeline_latency_seconds",
    "Record read by the pipeline -> its audience change handed to a destination",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENT_LAG = Histogram(
    "cdp_event_lag_seconds",
    "Wall clock minus event time when an event is applied",
    buckets=(0.01, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
)
WATERMARK = Gauge("cdp_watermark_seconds", "Event-time watermark (epoch seconds)")
STATE_BYTES = Gauge("cdp_rocksdb_bytes", "Live size of the RocksDB state (SST files + memtables)")

# Kafka broker health (flows.broker): one process's view of its broker.
BROKER_UP = Gauge("cdp_broker_up", "1 while the Kafka broker answers this process, 0 while not")
BROKER_ERRORS = Counter(
    "cdp_broker_errors", "Errors the Kafka clients reported (librdkafka), by kind", ["kind"]
)
KAFKA_PENDING = Gauge(
    "cdp_kafka_pending_messages",
    "Messages handed to a Kafka producer that the broker has not acknowledged yet",
)

_KINDS = (
    ("not JSON", "not_json"),
    ("JSON object", "not_object"),
    ("over the limit of", "too_large"),
    ("characters", "identity_too_long"),
    ("no usable identity", "no_identity"),
    ("no timestamp", "no_timestamp"),
    ("timestamp in the future", "future_timestamp"),
    ("timestamp", "bad_timestamp"),
    ("no eventType", "no_event_type"),
    ("eventType", "bad_event_type"),
    ("_id", "bad_id"),
    ("webhook", "webhook_failed"),
    ("privacy", "bad_privacy_command"),
    ("identity", "bad_identity"),
    ("identityMap", "bad_identity"),
    ("unknown source", "unknown_source"),
)


def reason_kind(reason: str) -> str:
    """A small fixed label set for dead-letter reasons (reasons carry names and sizes)."""
    for needle, kind in _KINDS:
        if needle in reason:
            return kind
    return "other"


# `labels()` takes a lock and builds a key on every call; the hot path keeps the children.
@lru_cache(maxsize=1024)
def records_in(source: str) -> Any:
    return RECORDS_IN.labels(source)


@lru_cache(maxsize=4096)
def changes(segment: str, status: str) -> Any:
    return CHANGES.labels(segment, status)


def watch_state_size(size: Callable[[], float]) -> None:
    STATE_BYTES.set_function(size)


DESTINATION_UP = Gauge(
    "cdp_destination_up",
    "1 while a webhook destination takes changes, 0 while down",
    ["destination"],
)
SPOOLED = Gauge(
    "cdp_destination_spooled", "Changes waiting in a destination's spool", ["destination"]
)
REDELIVERED = Counter(
    "cdp_destination_redelivered", "Changes delivered from a destination's spool", ["destination"]
)
SENDS_SKIPPED = Counter(
    "cdp_destination_sends_skipped",
    "Journey sends not posted again: the webhook delivered them already (an outbox replay)",
    ["destination"],
)
PAYLOAD_OMITTED = Counter(
    "cdp_payload_omitted",
    "Parts of a personalized message left out to keep it under its destination's max_payload_bytes",
    ["destination", "part"],  # part: event, traits, attributes
)
