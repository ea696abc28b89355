"""The seeded Luma-like stream generator: determinism, shapes, identity links, realism."""

from __future__ import annotations

import itertools
import re
import shutil
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import load_settings
from flows.generator import (
    JUNK_LINES,
    PRODUCTS,
    SOURCE_FILES,
    SPAN_DAYS,
    GeneratedStream,
    generate,
    write_files,
)
from operators.decode import Decoder
from schemas.records import DeadLetter, Origin

PEOPLE = 2_000
EVENTS = 20_000
START = "2026-11-01T00:00:00Z"
START_DT = datetime(2026, 11, 1, tzinfo=UTC)
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
DOMAINS = {"example.com", "example.org", "example.net"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
EVENT_TYPES = {
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.checkouts",
    "commerce.purchases",
    "userAccount.login",
}


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    return generate(PEOPLE, EVENTS, seed=11, start=START)


def people_of(stream: GeneratedStream) -> dict[int, dict[str, Any]]:
    return {k: v for k, v in stream.truth.items() if isinstance(k, int)}


def ecid(event: dict[str, Any]) -> str:
    return str(event["identityMap"]["ECID"][0]["id"])


def loyalty_id(record: dict[str, Any]) -> int:
    return int(record["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"])


def parse_time(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.fromisoformat(text)


def dump(stream: GeneratedStream) -> bytes:
    parts = (stream.crm, stream.loyalty, stream.web, stream.voice, stream.store)
    return b"\n".join(orjson.dumps(p) for p in parts) + orjson.dumps(
        stream.truth, option=orjson.OPT_NON_STR_KEYS
    )


# --- determinism and sizes ------------------------------------------------------------------


def test_same_seed_gives_the_same_stream() -> None:
    first = generate(300, 3_000, seed=5)
    second = generate(300, 3_000, seed=5)
    assert first == second
    assert dump(first) == dump(second)


def test_another_seed_gives_another_stream() -> None:
    first = generate(300, 3_000, seed=5)
    other = generate(300, 3_000, seed=6)
    assert dump(first) != dump(other)
    assert {e["_id"] for e in first.web}.isdisjoint(e["_id"] for e in other.web)


def test_events_add_up_to_the_requested_total(stream: GeneratedStream) -> None:
    assert len(stream.web) + len(stream.voice) + len(stream.store) == EVENTS
    assert len(stream.web) > len(stream.store) > 0
    assert len(stream.voice) > 0


def test_profile_sources_cover_parts_of_the_people(stream: GeneratedStream) -> None:
    assert 0.7 * PEOPLE < len(stream.crm) < 0.9 * PEOPLE
    assert 0.4 * PEOPLE < len(stream.loyalty) < 0.6 * PEOPLE
    people = people_of(stream)
    assert sorted(people) == list(range(PEOPLE))
    crm_only = [p for p in people.values() if p["crm_id"] and p["loyalty_id"] is None]
    loyalty_only = [p for p in people.values() if p["loyalty_id"] and p["crm_id"] is None]
    assert crm_only
    assert loyalty_only


@pytest.mark.parametrize(("people", "events"), [(1, 0), (1, 10), (2, 5), (3, 50)])
def test_tiny_streams_work(people: int, events: int) -> None:
    small = generate(people, events)
    assert len(small.web) + len(small.voice) + len(small.store) == events
    assert len(people_of(small)) == people


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="people"):
        generate(0, 10)
    with pytest.raises(ValueError, match="events"):
        generate(10, -1)
    with pytest.raises(ValueError, match="time zone"):
        generate(10, 10, start="2026-11-01T00:00:00")


# --- shapes ---------------------------------------------------------------------------------


def test_web_and_voice_events_are_experience_events(stream: GeneratedStream) -> None:
    for event in stream.web + stream.voice:
        assert isinstance(event["_id"], str)
        assert UUID.fullmatch(event["_id"])
        assert isinstance(event["timestamp"], str)
        assert isinstance(event["eventType"], str)
        identity_map = event["identityMap"]
        assert identity_map
        for entries in identity_map.values():
            assert entries
            assert all(isinstance(entry["id"], str) and entry["id"] for entry in entries)
    assert {e["eventType"] for e in stream.web} == EVENT_TYPES
    assert {e["eventType"] for e in stream.voice} == {"voice.intent"}


def test_store_purchases_look_like_the_offline_export(stream: GeneratedStream) -> None:
    for purchase in stream.store:
        assert "eventType" not in purchase
        assert "identityMap" not in purchase
        assert set(purchase) == {
            "_techmarketingdemos",
            "commerce",
            "productListItems",
            "timestamp",
            "_id",
        }
        assert isinstance(purchase["_techmarketingdemos"]["systemIdentifier"]["loyaltyId"], int)
        order = purchase["commerce"]["order"]
        assert re.fullmatch(r"\d{3}-\d{3}-\d{3}-\d{4}", order["purchaseID"])
        assert order["priceTotal"] > 0
        for item in purchase["productListItems"]:
            assert set(item) == {"SKU", "quantity"}


def test_timestamps_parse_fall_in_the_span_and_are_ordered(stream: GeneratedStream) -> None:
    end = START_DT + timedelta(days=SPAN_DAYS)
    for events in (stream.web, stream.voice, stream.store):
        times = [parse_time(e["timestamp"]) for e in events]
        assert times == sorted(times)
        assert times[0] >= START_DT
        assert times[-1] < end
    # Spread over the whole span, not bunched at the start.
    days = {parse_time(e["timestamp"]).date() for e in stream.web}
    assert len(days) == SPAN_DAYS


def test_event_ids_are_unique(stream: GeneratedStream) -> None:
    ids = [e["_id"] for e in stream.web + stream.voice + stream.store]
    assert len(ids) == len(set(ids))


def test_products_come_from_the_catalog_and_totals_add_up(stream: GeneratedStream) -> None:
    catalog = {sku: (name, category, price) for sku, name, category, price in PRODUCTS}
    purchases = [e for e in stream.web if e["eventType"] == "commerce.purchases"]
    assert purchases
    for event in stream.web:
        for item in event.get("productListItems", []):
            name, category, price = catalog[item["SKU"]]
            assert (item["name"], item["category"]) == (name, category)
            assert item["priceTotal"] == pytest.approx(price * item["quantity"])
    for event in purchases:
        order = event["commerce"]["order"]
        items_total = sum(item["priceTotal"] for item in event["productListItems"])
        assert order["priceTotal"] == pytest.approx(items_total)
        assert order["purchaseID"]
    for purchase in stream.store:
        assert all(item["SKU"] in catalog for item in purchase["productListItems"])


def test_crm_rows_are_shaped_like_the_luma_export(stream: GeneratedStream) -> None:
    no_contact = 0
    for row in stream.crm:
        crm_id = row["_techmarketingdemos"]["systemIdentifier"]["crmId"]
        assert re.fullmatch(r"[a-z0-9]{32}", crm_id)
        assert set(row["person"]["name"]) == {"firstName", "lastName"}
        assert row["homeAddress"]["city"]
        assert row["consents"]["marketing"]["email"]["val"] in {"y", "n"}
        email, phone = row["personalEmail"]["address"], row["mobilePhone"]["number"]
        if email is None:
            assert phone is None
            no_contact += 1
        else:
            assert email.strip().lower().split("@")[1] in DOMAINS
            assert re.fullmatch(r"\d{3}-\d{3}-\d{4}", phone)
    assert 0.05 < no_contact / len(stream.crm) < 0.15


def test_crm_emails_sometimes_differ_from_the_login_in_case_and_space(
    stream: GeneratedStream,
) -> None:
    by_crm = {p["crm_id"]: p for p in people_of(stream).values() if p["crm_id"]}
    variants = 0
    for row in stream.crm:
        email = row["personalEmail"]["address"]
        if email is None:
            continue
        truth = by_crm[row["_techmarketingdemos"]["systemIdentifier"]["crmId"]]
        assert email.strip().lower() == truth["email"]
        if email != truth["email"]:
            variants += 1
            assert email != email.strip()
            assert email.strip() != email.strip().lower()
    assert variants > 0.05 * len(stream.crm)


def test_loyalty_rows_are_shaped_like_the_luma_export(stream: GeneratedStream) -> None:
    crm_ids = {row["_techmarketingdemos"]["systemIdentifier"]["crmId"] for row in stream.crm}
    null_crm = 0
    for row in stream.loyalty:
        ids = row["_techmarketingdemos"]["systemIdentifier"]
        assert isinstance(ids["loyaltyId"], int)
        if ids["crmId"] is None:
            null_crm += 1
        else:
            assert ids["crmId"] in crm_ids
        loyalty = row["_techmarketingdemos"]["loyalty"]
        assert loyalty["level"] in {"bronze", "silver", "gold", "platinum"}
        assert isinstance(loyalty["points"], int)
        datetime.strptime(loyalty["memberSince"], "%Y-%m-%d")  # noqa: DTZ007 - a date, no zone
    assert 0.1 < null_crm / len(stream.loyalty) < 0.3
    levels = Counter(row["_techmarketingdemos"]["loyalty"]["level"] for row in stream.loyalty)
    assert set(levels) == {"bronze", "silver", "gold", "platinum"}
    loyalty_ids = [loyalty_id(row) for row in stream.loyalty]
    assert len(loyalty_ids) == len(set(loyalty_ids))


def test_store_purchases_belong_to_loyalty_members(stream: GeneratedStream) -> None:
    members = {loyalty_id(row) for row in stream.loyalty}
    assert all(loyalty_id(purchase) in members for purchase in stream.store)


# --- identity links -------------------------------------------------------------------------


def test_login_events_link_a_device_to_its_person(stream: GeneratedStream) -> None:
    by_email = {p["email"]: p for p in people_of(stream).values()}
    logins = [e for e in stream.web if e["eventType"] == "userAccount.login"]
    assert 0.015 < len(logins) / EVENTS < 0.06
    for login in logins:
        assert set(login["identityMap"]) == {"ECID", "Email"}
        email = login["identityMap"]["Email"][0]["id"]
        assert email == email.strip().lower()
        assert ecid(login) in by_email[email]["ecids"]
    others = [e for e in stream.web if e["eventType"] != "userAccount.login"]
    assert all(set(e["identityMap"]) == {"ECID"} for e in others)


def test_devices_browse_anonymously_before_the_first_login(stream: GeneratedStream) -> None:
    first_login: dict[str, str] = {}
    for event in stream.web:
        if event["eventType"] == "userAccount.login":
            first_login.setdefault(ecid(event), event["timestamp"])
    anonymous_first = {
        ecid(e)
        for e in stream.web
        if ecid(e) in first_login and e["timestamp"] < first_login[ecid(e)]
    }
    assert anonymous_first
    never_logged_in = {ecid(e) for e in stream.web} - set(first_login)
    assert never_logged_in


def test_each_person_has_one_to_three_own_devices(stream: GeneratedStream) -> None:
    shared = set(stream.truth["shared_devices"])
    owners: dict[str, int] = {}
    for index, person in people_of(stream).items():
        own = [d for d in person["ecids"] if d not in shared]
        assert 1 <= len(own) <= 3
        for device in own:
            assert owners.setdefault(device, index) == index


def test_shared_tablets_are_logged_into_by_two_people(stream: GeneratedStream) -> None:
    shared = stream.truth["shared_devices"]
    assert len(shared) >= 2
    emails: defaultdict[str, set[str]] = defaultdict(set)
    for event in stream.web:
        if event["eventType"] == "userAccount.login" and ecid(event) in shared:
            emails[ecid(event)].add(event["identityMap"]["Email"][0]["id"])
    for device in shared:
        assert len(emails[device]) == 2
        holders = [p for p in people_of(stream).values() if device in p["ecids"]]
        assert {p["email"] for p in holders} == emails[device]


def test_voice_events_carry_the_speaker_and_link_it_by_email(stream: GeneratedStream) -> None:
    owner = {p["voice_id"]: p for p in people_of(stream).values() if p["voice_id"]}
    seen: set[str] = set()
    queries: Counter[str] = Counter()
    for event in stream.voice:
        voice_id = event["identityMap"]["VoiceId"][0]["id"]
        person = owner[voice_id]
        if voice_id not in seen:  # a speaker's first event is the account link
            assert event["voice"]["intent"] == "link_account"
            seen.add(voice_id)
        if "Email" in event["identityMap"]:
            assert event["voice"]["intent"] == "link_account"
            assert event["identityMap"]["Email"][0]["id"] == person["email"]
        if event["voice"]["intent"] == "search_products":
            queries[event["voice"]["query"]] += 1
    assert {"fitness shirts", "yoga pants", "running shoes", "water bottle"} <= set(queries)
    assert queries["fitness shirts"] >= 5  # enough for the demo's voice segment


# --- behaviour ------------------------------------------------------------------------------


def test_sessions_buy_and_abandon_carts(stream: GeneratedStream) -> None:
    per_device: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in stream.web:
        per_device[ecid(event)].append(event)
    bought = abandoned = 0
    for events in per_device.values():
        for i, event in enumerate(events):
            if event["eventType"] != "commerce.productListAdds":
                continue
            added = parse_time(event["timestamp"])
            later = [
                e["eventType"]
                for e in events[i + 1 :]
                if parse_time(e["timestamp"]) - added <= timedelta(minutes=30)
            ]
            if "commerce.purchases" in later:
                bought += 1
            else:
                abandoned += 1
    assert bought > 0
    assert abandoned > bought  # most carts are left behind


def test_events_in_a_session_are_seconds_apart(stream: GeneratedStream) -> None:
    per_device: defaultdict[str, list[datetime]] = defaultdict(list)
    for event in stream.web:
        per_device[ecid(event)].append(parse_time(event["timestamp"]))
    gaps = [
        (b - a).total_seconds()
        for times in per_device.values()
        for a, b in itertools.pairwise(times)
    ]
    assert 3 <= statistics.median(gaps) <= 90


def test_activity_is_zipf_skewed(stream: GeneratedStream) -> None:
    people = people_of(stream)
    shared = set(stream.truth["shared_devices"])
    by_ecid = {d: i for i, p in people.items() for d in p["ecids"] if d not in shared}
    by_voice = {p["voice_id"]: i for i, p in people.items() if p["voice_id"]}
    by_loyalty = {p["loyalty_id"]: i for i, p in people.items() if p["loyalty_id"]}
    counts = Counter(by_ecid[ecid(e)] for e in stream.web if ecid(e) not in shared)
    counts.update(by_voice[e["identityMap"]["VoiceId"][0]["id"]] for e in stream.voice)
    counts.update(by_loyalty[loyalty_id(e)] for e in stream.store)
    per_person = sorted((counts[i] for i in people), reverse=True)
    top = per_person[: PEOPLE // 100]
    median = statistics.median(per_person)
    assert statistics.mean(top) > 20 * max(median, 1)
    assert sum(top) / sum(per_person) > 0.15  # a uniform stream would give the top 1 % 1 %
    assert sum(1 for n in per_person if n == 0) < PEOPLE / 2  # a long tail, not a handful


def test_only_example_domains_are_used(stream: GeneratedStream) -> None:
    for person in people_of(stream).values():
        assert person["email"].split("@")[1] in DOMAINS


# --- files ----------------------------------------------------------------------------------


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_write_files_writes_every_source(tmp_path: Path) -> None:
    small = generate(200, 2_000, seed=3)
    paths = write_files(small, tmp_path, junk=False)
    assert {name: p.name for name, p in paths.items()} == SOURCE_FILES
    assert orjson.loads(paths["crm"].read_bytes()) == small.crm
    assert orjson.loads(paths["loyalty"].read_bytes()) == small.loyalty
    assert [orjson.loads(line) for line in read_lines(paths["web"])] == small.web
    assert [orjson.loads(line) for line in read_lines(paths["voice"])] == small.voice
    assert [orjson.loads(line) for line in read_lines(paths["store"])] == small.store


def test_junk_lines_are_spread_through_the_web_file(tmp_path: Path) -> None:
    small = generate(200, 2_000, seed=3)
    paths = write_files(small, tmp_path, junk=True)
    lines = read_lines(paths["web"])
    assert len(lines) == len(small.web) + JUNK_LINES
    good = {orjson.dumps(e) for e in small.web}
    junk = [i for i, line in enumerate(lines) if line not in good]
    assert len(junk) == JUNK_LINES
    assert junk[0] > 0
    assert junk[-1] < len(lines) - 1
    assert len(read_lines(paths["voice"])) == len(small.voice)
    assert len(read_lines(paths["store"])) == len(small.store)


def test_junk_lines_are_written_even_without_events(tmp_path: Path) -> None:
    paths = write_files(generate(1, 0), tmp_path, junk=True)
    assert len(read_lines(paths["web"])) == JUNK_LINES


def test_demo_config_reads_the_generated_files(tmp_path: Path) -> None:
    small = generate(300, 3_000, seed=3)
    paths = write_files(small, tmp_path, junk=True)
    shutil.copy(DEMO_CONFIG, tmp_path / "demo.yaml")
    settings = load_settings(tmp_path / "demo.yaml", env={})
    assert {s.name: settings.resolve(s.path) for s in settings.sources if s.path} == paths

    decoder = Decoder.from_settings(settings)
    reasons: list[str] = []
    decoded = 0
    for name, path in paths.items():
        if path.suffix == ".json":
            lines = [orjson.dumps(row) for row in orjson.loads(path.read_bytes())]
        else:
            lines = read_lines(path)
        for offset, line in enumerate(lines):
            result = decoder.decode(Origin(name, 0, offset), line)
            if isinstance(result, DeadLetter):
                assert name == "web"
                reasons.append(result.reason)
            else:
                decoded += 1
    assert len(reasons) == JUNK_LINES
    assert len(set(reasons)) == JUNK_LINES  # each junk line is bad in its own way
    assert decoded == len(small.crm) + len(small.loyalty) + 3_000
