"""Clocks that lie: timestamps from the future, numbers in the wrong unit, and a state whose
event time a wrong clock moved ahead (issue #12, DESIGN §4 `time.max_future`)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from config.settings import parse_settings
from flows.read import _DecodeBatch
from flows.runtime import check_event_time
from operators import metrics
from operators.decode import Decoder
from operators.steps.positions import PARTITIONS_KEY, WATERMARK_KEY
from operators.store import StoreError, open_store
from schemas.records import DeadLetter, Origin, Record

CONFIG = """\
namespaces: [{name: ECID}]
time: {max_future: 10m}
sources:
  - {name: web, kind: event, path: w.json}
  - {name: app, kind: event, path: a.json, timestamp_unit: s}
  - {name: crm, kind: profile, path: c.json}
"""
NOW = 1_764_590_400_000  # 2025-12-01T12:00:00Z
MIN = 60_000


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {}))


def body(ts: object, source: str = "web") -> bytes:
    record: dict[str, object] = {"_id": "e1", "identityMap": {"ECID": [{"id": "d1"}]}}
    if source != "crm":
        record["eventType"] = "view"
    record["timestamp"] = ts
    return orjson.dumps(record)


def dec(decoder: Decoder, ts: object, source: str = "web") -> Record | DeadLetter:
    return decoder.decode(Origin(source, 0, 1), body(ts, source), written_ms=NOW)


def test_a_record_from_the_future_is_a_dead_letter(decoder: Decoder) -> None:
    for ts in ("2099-01-01T00:00:00Z", NOW + 11 * MIN, 4_070_908_800_000):
        out = dec(decoder, ts)
        assert isinstance(out, DeadLetter), ts
        assert out.reason.startswith("timestamp in the future")
        assert metrics.reason_kind(out.reason) == "future_timestamp"
    # Within the allowance, and in the past, records are taken.
    for ts in (NOW + 9 * MIN, NOW - 86_400_000, "2020-08-11T00:00:00Z"):
        assert isinstance(dec(decoder, ts), Record), ts
    # Profile records are held to the same clock.
    assert isinstance(dec(decoder, "2099-01-01T00:00:00Z", "crm"), DeadLetter)


def test_without_a_written_time_nothing_is_refused_for_the_future(decoder: Decoder) -> None:
    # The decoder is pure: the caller says when a record was written (unit tests, tools).
    out = decoder.decode(Origin("web", 0, 1), body("2099-01-01T00:00:00Z"))
    assert isinstance(out, Record)


def test_numeric_timestamps_take_the_source_unit(decoder: Decoder) -> None:
    seconds = NOW // 1000
    rec = dec(decoder, seconds, "app")
    assert isinstance(rec, Record) and rec.ts_ms == seconds * 1000
    frac = dec(decoder, seconds + 0.25, "app")
    assert isinstance(frac, Record) and frac.ts_ms == seconds * 1000 + 250
    rec = dec(decoder, NOW, "web")  # default unit: milliseconds
    assert isinstance(rec, Record) and rec.ts_ms == NOW


def test_a_number_in_the_wrong_unit_is_a_dead_letter_not_1970(decoder: Decoder) -> None:
    as_seconds = dec(decoder, NOW // 1000, "web")  # epoch seconds on a milliseconds source
    assert isinstance(as_seconds, DeadLetter)
    assert "implausible in milliseconds" in as_seconds.reason
    assert "timestamp_unit" in as_seconds.reason
    as_ms = dec(decoder, NOW, "app")  # epoch milliseconds on a seconds source
    assert isinstance(as_ms, DeadLetter) and "implausible in seconds" in as_ms.reason
    assert metrics.reason_kind(as_ms.reason) == "bad_timestamp"
    for junk in (True, [1], {"t": 1}):
        out = dec(decoder, junk, "web")
        assert isinstance(out, DeadLetter) and "timestamp" in out.reason


def test_the_read_side_refuses_records_stamped_after_their_message(decoder: Decoder) -> None:
    """Kafka: the reference is the message's own timestamp (a replay of last year's topic still
    catches a record stamped a year after it was produced), never later than the wall clock
    (a producer's clock may lie too)."""
    wall = time.time_ns() // 1_000_000  # the read side reads the real clock
    produced = wall - 365 * 86_400_000

    def message(ts_ms: int, stamp: int | None) -> SimpleNamespace:
        return SimpleNamespace(raw=(Origin("web", 0, 1), body(ts_ms)), stamp=stamp)

    decode = _DecodeBatch(decoder, locate=lambda m: m.raw, written=lambda m: m.stamp)
    out = decode(
        [
            message(produced + MIN, produced),  # a minute after its message: fine
            message(produced + 30 * 86_400_000, produced),  # a month after: refused
            message(wall - MIN, None),  # no message timestamp: the wall clock decides
            message(wall + 86_400_000, 4_102_444_800_000),  # a producer stamping 2100
        ]
    )
    assert [type(x).__name__ for x in out] == ["Record", "DeadLetter", "Record", "DeadLetter"]


def test_a_state_far_ahead_of_the_wall_clock_is_refused_then_reset(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    year_2099 = 4_070_908_800_000
    store.write({WATERMARK_KEY: str(year_2099).encode(), PARTITIONS_KEY: b'{"web/0": 1}'})
    store.close()
    with pytest.raises(StoreError) as refused:
        check_event_time(tmp_path, NOW, 10 * MIN, reset=False)
    message = str(refused.value)
    assert "2099-01-01T00:00:00" in message
    assert "--reset-event-time" in message and "new state directory" in message
    check_event_time(tmp_path, NOW, 10 * MIN, reset=True)
    store = open_store(tmp_path)
    assert store.get(WATERMARK_KEY) == str(NOW).encode()
    store.close()
    check_event_time(tmp_path, NOW, 10 * MIN, reset=False)  # now accepted


def test_a_state_slightly_ahead_or_behind_is_accepted(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.write({WATERMARK_KEY: str(NOW + 5 * MIN).encode()})
    store.close()
    check_event_time(tmp_path, NOW, 10 * MIN, reset=False)
    check_event_time(tmp_path / "new", NOW, 10 * MIN, reset=False)  # no state yet


def test_the_read_side_gives_a_profile_record_its_message_time(decoder: Decoder) -> None:
    """A CRM record with no time of its own takes its Kafka message timestamp (never later
    than the wall clock); a file's record (no message) none. Events keep their own time; a
    replay `--from` a time skips old events but never a profile record, whatever its time."""
    wall = time.time_ns() // 1_000_000
    produced = wall - 365 * 86_400_000
    crm = orjson.dumps({"identityMap": {"ECID": [{"id": "d1"}]}, "tier": "vip"})

    def message(source: str, raw: bytes, stamp: int | None) -> SimpleNamespace:
        return SimpleNamespace(raw=(Origin(source, 0, 1), raw), stamp=stamp)

    decode = _DecodeBatch(
        decoder, locate=lambda m: m.raw, start_ms=produced, written=lambda m: m.stamp
    )
    out = decode(
        [
            message("crm", crm, produced - 1),  # before --from: still applied
            message("crm", crm, 4_102_444_800_000),  # a producer stamping 2100: the wall clock
            message("web", body(produced - 2), produced + 5),  # an event before --from: skipped
            message("web", body(produced + 3), produced + 5),
        ]
    )
    assert [(type(x).__name__, getattr(x, "ts_ms", None)) for x in out[:1]] == [
        ("Record", produced - 1)
    ]
    second = out[1]
    assert isinstance(second, Record) and second.ts_ms is not None
    assert wall <= second.ts_ms <= time.time_ns() // 1_000_000
    assert [(x.origin.source, getattr(x, "ts_ms", None)) for x in out[2:]] == [
        ("web", produced + 3)
    ]
    files = _DecodeBatch(decoder)([(Origin("crm", 0, 1), crm)])
    assert isinstance(files[0], Record) and files[0].ts_ms is None
