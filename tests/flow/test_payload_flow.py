"""Personalized audience changes through the whole pipeline (issue #16, payloads): a real
`cdp replay --files` of the Luma data with file destinations that ask for profile attributes,
a trait and the event that caused each change, one of them under a tiny size limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.flow.test_luma_files import DANIEL_CRM
from tests.helpers import luma_config, read_jsonl, replay_files

DANIEL_LOYALTY = 5625458
ASKED = "attributes: [person.name.firstName, homeAddress.city], traits: [lifetime_value]"
SMALL = 700  # bytes: the change, the name and the value fit; a purchase with its items not


def with_destinations(config: Path, tmp: Path) -> None:
    text = config.read_text()
    line = next(x for x in text.splitlines() if x.startswith("  - {name: audiences,"))
    added = (
        f"\n  - {{name: email, kind: file, path: {tmp}/email.jsonl, {ASKED}, event: true}}"
        f"\n  - {{name: small, kind: file, path: {tmp}/small.jsonl, {ASKED}, event: true,"
        f" max_payload_bytes: {SMALL}}}"
    )
    config.write_text(text.replace(line, line + added))


def daniels(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in lines if DANIEL_CRM in x["identities"].get("CRMID", [])]


def purchase_of(luma_dir: Path, loyalty_id: int) -> dict[str, Any]:
    bodies = [
        json.loads(x)
        for x in (luma_dir / "luma-offline-purchases.json").read_text().splitlines()
        if x.strip()
    ]
    (body,) = [
        b for b in bodies if b["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"] == loyalty_id
    ]
    return body


@pytest.mark.parametrize("workers", [1, 2])
def test_luma_changes_carry_the_name_the_lifetime_value_and_the_purchase(
    tmp_path: Path, luma_dir: Path, workers: int
) -> None:
    config = luma_config(tmp_path, luma_dir)
    with_destinations(config, tmp_path)
    replay_files(config, tmp_path / "state", workers)
    plain = {x["id"]: x for x in read_jsonl(tmp_path / "luma-audiences.jsonl")}
    email = read_jsonl(tmp_path / "email.jsonl")
    small = read_jsonl(tmp_path / "small.jsonl")
    assert len(plain) > 500 and len(email) == len(plain) == len(small)
    for line in email:  # the change as every destination has it, plus what was asked for
        extra = {k: v for k, v in line.items() if k not in plain[line["id"]]}
        assert set(extra) == {"attributes", "traits", "event"}, line["id"]
        assert set(line["attributes"]) == {"person.name.firstName", "homeAddress.city"}

    purchase = purchase_of(luma_dir, DANIEL_LOYALTY)
    bought = [x for x in daniels(email) if x["reason"] == f"event:{purchase['_id']}"]
    assert {x["segment_id"] for x in bought} == {"gold-buyers", "big-spenders", "hoodie-buyers"}
    for line in bought:
        # The CRM (priority 20) beats the loyalty record's "Daniel" and "New York City".
        assert line["attributes"] == {
            "person.name.firstName": "Danny",
            "homeAddress.city": "Portland",
        }
        assert line["traits"] == {"lifetime_value": purchase["commerce"]["order"]["priceTotal"]}
        assert line["event"] == {**purchase, "eventType": "commerce.purchases"}
        assert line["event"]["productListItems"][3] == {"SKU": "LLMH09", "quantity": 3}

    # Under the tiny limit the event is left out first and said so; nothing else is lost.
    by_id = {x["id"]: x for x in email}
    omitted = 0
    raw = [x for x in (tmp_path / "small.jsonl").read_bytes().splitlines() if x.strip()]
    for line, size in zip(small, map(len, raw), strict=True):
        full = by_id[line["id"]]
        if "omitted" in line:
            omitted += 1
            assert line["omitted"] == ["event"] and "event" not in line
            assert (line["attributes"], line["traits"]) == (full["attributes"], full["traits"])
        else:
            assert line == full
        assert size <= SMALL, line["id"]
    assert omitted > len(small) // 2
    assert all(x["omitted"] == ["event"] for x in daniels(small))
