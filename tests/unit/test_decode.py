import pickle
from pathlib import Path

import orjson
import pytest

from config.settings import parse_settings
from operators.decode import Decoder
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
