import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import parse_settings
from operators import metrics
from operators.decode import Decoder
from operators.rules import event_values  # what sum(...) reads
from schemas.records import DeadLetter, Origin, Record, record_from_stored, record_to_stored

CONFIG = """\
namespaces:
  - {name: CRMID, unique: true}
  - {name: LoyaltyId, unique: true}
  - {name: Email, unique: true, normalize: email}
  - {name: Phone, normalize: phone}
  - {name: ECID}
sources:
  - name: crm
    kind: profile
    path: crm.json
    priority: 20
    identities:
      sys.crmId: CRMID
      personalEmail.address: Email
      mobilePhone.number: Phone
  - name: purchases
    kind: event
    path: p.json
    event_type: commerce.purchases
    identities: {sys.loyaltyId: LoyaltyId}
  - name: web
    kind: event
    path: w.json
"""


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {}))


def dec(decoder: Decoder, source: str, body: object) -> Record | DeadLetter:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return decoder.decode(Origin(source, 0, 7), raw)


def test_descriptors_normalise_and_order_identities(decoder: Decoder) -> None:
    rec = dec(
        decoder,
        "crm",
        {
            "sys": {"crmId": "abc"},
            "personalEmail": {"address": " DWright@X.com "},
            "mobilePhone": {"number": "212-555-5555"},
        },
    )
    assert isinstance(rec, Record)
    assert rec.identities == (("CRMID", "abc"), ("Email", "dwright@x.com"), ("Phone", "2125555555"))
    assert rec.kind == "profile" and rec.ts_ms is None and rec.priority == 20


def test_integers_become_strings_and_event_type_comes_from_source(decoder: Decoder) -> None:
    rec = dec(
        decoder,
        "purchases",
        {"sys": {"loyaltyId": 5625458}, "timestamp": "2020-08-11T00:00:00Z", "_id": "e1"},
    )
    assert isinstance(rec, Record)
    assert rec.identities == (("LoyaltyId", "5625458"),)
    assert rec.event_type == "commerce.purchases" and rec.body["eventType"] == "commerce.purchases"
    assert rec.ts_ms == 1597104000000 and rec.event_id == "e1"


def test_identity_map_and_unknown_namespaces_rank_last(decoder: Decoder) -> None:
    rec = dec(
        decoder,
        "web",
        {
            "eventType": "x",
            "timestamp": 5,
            "_id": "a",
            "identityMap": {
                "Zeta": [{"id": "z"}],
                "ECID": [{"id": "e"}],
                "Email": [{"id": "A@B.C"}],
            },
        },
    )
    assert isinstance(rec, Record)
    assert rec.identities == (("Email", "a@b.c"), ("ECID", "e"), ("Zeta", "z"))


@pytest.mark.parametrize(
    "blocked", ["", "null", "NULL", " none ", "undefined", "-1", "0000", "0-0-0", "anonymous"]
)
def test_blocked_values_are_no_identity(decoder: Decoder, blocked: str) -> None:
    rec = dec(
        decoder,
        "web",
        {"eventType": "x", "timestamp": 5, "identityMap": {"ECID": [{"id": blocked}]}},
    )
    assert isinstance(rec, DeadLetter)
    assert "no usable identity" in rec.reason


def test_phone_keeps_leading_plus(decoder: Decoder) -> None:
    rec = dec(
        decoder, "crm", {"sys": {"crmId": "c"}, "mobilePhone": {"number": "+1 (212) 555-0000"}}
    )
    assert isinstance(rec, Record)
    assert ("Phone", "+12125550000") in rec.identities


def test_missing_event_id_is_derived_stably(decoder: Decoder) -> None:
    body = {
        "eventType": "x",
        "timestamp": "2026-01-01T00:00:00Z",
        "identityMap": {"ECID": [{"id": "e"}]},
    }
    a, b = dec(decoder, "web", body), dec(decoder, "web", dict(reversed(list(body.items()))))
    assert isinstance(a, Record) and isinstance(b, Record)
    assert a.event_id == b.event_id and a.event_id and a.event_id.startswith("d_")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (orjson.dumps({"eventType": "x", "identityMap": {"ECID": [{"id": "e"}]}}), "no timestamp"),
        (orjson.dumps({"timestamp": 1, "identityMap": {"ECID": [{"id": "e"}]}}), "no eventType"),
        (
            orjson.dumps(
                {"eventType": "x", "timestamp": "yesterday", "identityMap": {"ECID": [{"id": "e"}]}}
            ),
            "ISO-8601",
        ),
        (
            orjson.dumps({"eventType": "x", "timestamp": 1, "identityMap": {"ECID": "e"}}),
            "must be a list",
        ),
        (
            orjson.dumps(
                {"eventType": "x", "timestamp": 1, "identityMap": {"ECID": [{"id": "e" * 5000}]}}
            ),
            "5000 characters",
        ),
        (
            orjson.dumps(
                {"eventType": "x", "timestamp": 1, "identityMap": {"ECID": [{"id": ["e"]}]}}
            ),
            "string or an integer",
        ),
    ],
)
def test_bad_records_become_dead_letters_with_reason(
    decoder: Decoder, raw: bytes, reason: str
) -> None:
    out = decoder.decode(Origin("web", 3, 42), raw)
    assert isinstance(out, DeadLetter)
    assert reason in out.reason
    assert out.raw == raw and out.origin == Origin("web", 3, 42)
    doc = orjson.loads(out.to_json())
    assert doc["source"] == "web" and doc["offset"] == 42


def test_reasons_carry_no_personal_values(decoder: Decoder) -> None:
    out = dec(
        decoder,
        "web",
        {
            "eventType": "x",
            "timestamp": 1,
            "identityMap": {"Email": [{"id": "secret.person@example.com" * 20}]},
        },
    )
    assert isinstance(out, DeadLetter)
    assert "secret.person" not in out.reason


def test_oversized_record(decoder: Decoder) -> None:
    raw = orjson.dumps({"eventType": "x", "timestamp": 1, "pad": "x" * 2_000_000})
    out = decoder.decode(Origin("web", 0, 0), raw)
    assert isinstance(out, DeadLetter) and "over the limit" in out.reason


@pytest.mark.parametrize(
    ("source", "raw"),
    [
        ("purchases", b'{"sys": {"loyaltyId": 7}, "timestamp": "2026-01-01T00:00:00Z", "x": [1]}'),
        ("crm", b'{"sys": {"crmId": "C1"}, "personalEmail": {"address": "A@B.co"}}'),
    ],
)
def test_records_cross_processes_as_raw_json(decoder: Decoder, source: str, raw: bytes) -> None:
    """Between processes a record travels as its raw JSON and is parsed again on first use;
    what arrives equals what was decoded, in pickles and in the stored (outbox) form."""
    record = decoder.decode(Origin(source, 3, 41), raw, 99, seq=5)
    assert isinstance(record, Record)
    for copy in (
        pickle.loads(pickle.dumps(record)),
        record_from_stored(orjson.loads(orjson.dumps(record_to_stored(record)))),
    ):
        assert copy.parsed is None  # not parsed until someone needs the body
        assert copy.body == record.body
        assert copy == record  # every field, the parsed body included
    # A record made without raw JSON (tests, replays of old outboxes) carries its body.
    bare = Record(
        Origin("web", 0, 1), 2, "event", 0, (("ECID", "e"),), {"eventType": "t"}, 5, "i", "t"
    )
    assert pickle.loads(pickle.dumps(bare)) == bare
    assert record_from_stored(orjson.loads(orjson.dumps(record_to_stored(bare)))) == bare


TYPED = Decoder.from_settings(
    parse_settings(
        """\
namespaces: [{name: ECID}]
sources:
  - name: shop
    kind: event
    path: s.json
    fields:
      commerce.order.priceTotal: number
      productListItems.priceTotal: number
      productListItems.quantity: integer
      loyalty.number: string
      consent.given: boolean
      delivery.promised: timestamp
      tags: string
""",
        Path("/c.yaml"),
        {},
        {},
    )
)


def typed(body: dict[str, object]) -> Record | DeadLetter:
    base = {"_id": "e1", "eventType": "commerce.purchases", "timestamp": 1000}
    base["identityMap"] = {"ECID": [{"id": "d1"}]}
    return dec(TYPED, "shop", {**base, **body})


def test_declared_numbers_are_coerced_through_lists() -> None:
    rec = typed(
        {
            "commerce": {"order": {"priceTotal": "450.00"}},
            "productListItems": [
                {"priceTotal": " 12.5 ", "quantity": "2"},
                {"priceTotal": 7, "quantity": 3.0},
                {"SKU": "no price"},
                {"priceTotal": None},
            ],
            "loyalty": {"number": 5625458},
            "consent": {"given": "TRUE"},
            "delivery": {"promised": "2026-12-01T10:00:00Z"},
            "tags": ["a", 1],
        }
    )
    assert isinstance(rec, Record), rec
    body = rec.parsed
    assert body["commerce"]["order"]["priceTotal"] == 450.0
    items = body["productListItems"]
    assert [i.get("priceTotal") for i in items] == [12.5, 7, None, None]
    assert [i.get("quantity") for i in items] == [2, 3, None, None]
    assert type(items[1]["quantity"]) is int
    assert body["loyalty"]["number"] == "5625458"
    assert body["consent"]["given"] is True
    assert body["tags"] == ["a", "1"]


def test_a_sum_over_a_price_sent_as_a_string_counts_it() -> None:
    rec = typed({"commerce": {"order": {"priceTotal": "450.00"}}})
    assert isinstance(rec, Record)
    assert event_values(rec.parsed, "commerce.order.priceTotal") == [450.0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"commerce": {"order": {"priceTotal": "abc"}}}, "commerce.order.priceTotal"),
        ({"commerce": {"order": {"priceTotal": "1,234.50"}}}, "must be a number"),
        ({"commerce": {"order": {"priceTotal": True}}}, "must be a number"),
        ({"commerce": {"order": {"priceTotal": {"v": 1}}}}, "must be a number"),
        ({"commerce": {"order": {"priceTotal": "1e999"}}}, "must be a number"),
        ({"commerce": {"order": {"priceTotal": "9" * 5000}}}, "must be a number"),
        ({"productListItems": [{"quantity": "2.5"}]}, "productListItems.quantity must be an int"),
        ({"loyalty": {"number": [{"x": 1}]}}, "loyalty.number must be a string"),
        ({"consent": {"given": "maybe"}}, "consent.given must be true or false"),
        ({"delivery": {"promised": "next tuesday"}}, "delivery.promised must be an ISO-8601"),
    ],
)
def test_a_declared_field_of_the_wrong_type_is_a_dead_letter(
    body: dict[str, object], reason: str
) -> None:
    dead = typed(body)
    assert isinstance(dead, DeadLetter)
    assert reason in dead.reason
    assert "abc" not in dead.reason and "maybe" not in dead.reason  # never the value


def test_undeclared_sources_keep_strings() -> None:
    rec = dec(
        Decoder.from_settings(parse_settings(CONFIG, Path("/c.yaml"), {}, {})),
        "web",
        {
            "_id": "e",
            "eventType": "x",
            "timestamp": 1,
            "identityMap": {"ECID": [{"id": "d"}]},
            "commerce": {"order": {"priceTotal": "450.00"}},
        },
    )
    assert isinstance(rec, Record) and rec.parsed["commerce"]["order"]["priceTotal"] == "450.00"


TIME_CONFIG = """\
namespaces: [{name: CRMID, unique: true}, {name: ECID}]
sources:
  - {name: crm, kind: profile, path: c.json, timestamp_field: meta.updatedAt,
     identities: {crmId: CRMID}}
  - {name: points, kind: profile, path: p.json, timestamp_field: at, timestamp_unit: s,
     identities: {crmId: CRMID}}
  - {name: plain, kind: profile, path: x.json, identities: {crmId: CRMID}}
  - {name: app, kind: event, path: a.json, timestamp_field: ctx.sentAt,
     identities: {crmId: CRMID}}
"""
T = 1_764_590_400_000  # 2025-12-01T12:00:00Z


@pytest.fixture(scope="module")
def timed() -> Decoder:
    return Decoder.from_settings(parse_settings(TIME_CONFIG, Path("/c.yaml"), {}, {}))


def at(decoder: Decoder, source: str, body: dict[str, object], message: int | None = None) -> Any:
    return decoder.decode(Origin(source, 0, 1), orjson.dumps(body), message_ms=message)


def test_a_profile_records_time_is_its_field_else_its_message_time(timed: Decoder) -> None:
    rec = at(timed, "crm", {"crmId": "c1", "meta": {"updatedAt": "2025-12-01T12:00:00Z"}}, 5)
    assert isinstance(rec, Record) and rec.ts_ms == T  # the field beats the message time
    assert rec.body["meta"] == {"updatedAt": "2025-12-01T12:00:00Z"}  # still an attribute
    assert at(timed, "points", {"crmId": "c1", "at": T // 1000}).ts_ms == T  # the source's unit
    # Missing or null: the Kafka message timestamp; none (a file): no time, ordered by place.
    for body in ({"crmId": "c1"}, {"crmId": "c1", "meta": {"updatedAt": None}}):
        assert at(timed, "crm", body, T).ts_ms == T
        assert at(timed, "crm", body).ts_ms is None
    # Without timestamp_field a profile record's top-level `timestamp` is its time, as before.
    assert at(timed, "plain", {"crmId": "c1", "timestamp": T}, 5).ts_ms == T
    assert at(timed, "plain", {"crmId": "c1"}, 5).ts_ms == 5
    # The order key: the record's time first, so a later message wins over a higher partition.
    early = timed.decode(Origin("crm", 1, 9), b'{"crmId": "c1"}', message_ms=T - 1)
    late = timed.decode(Origin("crm", 0, 1), b'{"crmId": "c1"}', message_ms=T)
    assert isinstance(early, Record) and isinstance(late, Record) and early.order < late.order


@pytest.mark.parametrize(
    ("source", "body", "reason"),
    [
        ("crm", {"meta": {"updatedAt": "yesterday"}}, "timestamp_field meta.updatedAt is not ISO"),
        ("crm", {"meta": {"updatedAt": True}}, "timestamp_field meta.updatedAt must be an ISO"),
        ("crm", {"meta": {"updatedAt": T // 1000}}, "implausible in milliseconds"),
        ("points", {"at": T}, "timestamp_field at is implausible in seconds"),
        ("app", {"eventType": "x", "timestamp": T}, "event has no timestamp (timestamp_field"),
        ("app", {"eventType": "x", "ctx": {"sentAt": []}}, "timestamp_field ctx.sentAt must be"),
    ],
)
def test_a_bad_time_field_is_a_dead_letter_that_names_the_field(
    timed: Decoder, source: str, body: dict[str, object], reason: str
) -> None:
    out = at(timed, source, {"crmId": "c1", **body}, T)
    assert isinstance(out, DeadLetter) and reason in out.reason, out
    assert metrics.reason_kind(out.reason) in ("bad_timestamp", "no_timestamp")


def test_an_events_time_field_replaces_its_timestamp(timed: Decoder) -> None:
    body = {"crmId": "c1", "eventType": "x", "timestamp": 5, "ctx": {"sentAt": T}}
    rec = at(timed, "app", body, 7)
    assert isinstance(rec, Record) and rec.ts_ms == T
