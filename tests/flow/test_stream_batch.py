"""Stream = batch (DESIGN §5): after `cdp replay --files`, every profile's memberships equal an
independent batch evaluation (tests/batch_oracle.py) of the same rules at now = the last event
time — with one worker and with two.

The generated sources are each in time order but are read one file after the other (web, then
voice, then store), so most voice and store events arrive long after the watermark has passed
them: the final state must not depend on that. The segments cover every rule kind.

Then, one by one: windows that close by timer at the exact time, and what absent() must keep
when an older cart add becomes the latest one (through a merge, or read late).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.generator import generate, write_files
from tests.batch_oracle import (
    BatchResult,
    View,
    contains,
    eq,
    evaluate,
    event_is,
    ge,
    gt,
    icontains,
    iequals,
    is_null,
    isin,
    le,
    lt,
    ne,
    startswith,
    values,
)
from tests.helpers import alternate, export, read_jsonl, replay_files

PEOPLE = 400
EVENTS = 6000
SEED = 5

PURCHASE = event_is("commerce.purchases")
VIEW = event_is("commerce.productViews")
ADD = event_is("commerce.productListAdds")
CHECKOUT = event_is("commerce.checkouts")
VOICE = event_is("voice.intent")
LEVEL = "_techmarketingdemos.loyalty.level"
POINTS = "_techmarketingdemos.loyalty.points"
CONSENT = "consents.marketing.email.val"
WATCHES = ["24-MG01", "24-MG02", "24-WG02"]


@dataclass(frozen=True)
class Segment:
    id: str
    rule: str  # for the engine
    batch: Callable[[View], bool]  # the same rule, written by hand for the oracle


SEGMENTS = (
    # attribute tests
    Segment(
        "gold-or-platinum",
        f'profile.{LEVEL} in ["gold", "platinum"]',
        lambda v: isin(v.profile(LEVEL), ["gold", "platinum"]),
    ),
    Segment(
        "outside-portland",
        'profile.homeAddress.city != "Portland"',
        lambda v: ne(v.profile("homeAddress.city"), "Portland"),
    ),
    Segment("few-points", f"profile.{POINTS} < 200000", lambda v: lt(v.profile(POINTS), 200000)),
    Segment("many-points", f"profile.{POINTS} >= 500000", lambda v: ge(v.profile(POINTS), 500000)),
    Segment(
        "example-com",
        'profile.personalEmail.address contains "@example.com"',
        lambda v: contains(v.profile("personalEmail.address"), "@example.com"),
    ),
    Segment(
        "example-org-any-case",  # CRM rows write some domains as "Example.org"
        'profile.personalEmail.address icontains "@EXAMPLE.ORG"',
        lambda v: icontains(v.profile("personalEmail.address"), "@EXAMPLE.ORG"),
    ),
    Segment(
        "portland-any-case",
        'profile.homeAddress.city iequals "PORTLAND"',
        lambda v: iequals(v.profile("homeAddress.city"), "PORTLAND"),
    ),
    Segment(
        "s-surnames",
        'profile.person.name.lastName startswith "S"',
        lambda v: startswith(v.profile("person.name.lastName"), "S"),
    ),
    Segment(
        "no-phone",
        "profile.mobilePhone.number == null",
        lambda v: is_null(v.profile("mobilePhone.number")),
    ),
    Segment(
        "consent-known-not-no",
        f'profile.{CONSENT} != null and not profile.{CONSENT} == "n"',
        lambda v: not is_null(v.profile(CONSENT)) and not eq(v.profile(CONSENT), "n"),
    ),
    # aggregates, without and with a window
    Segment(
        "buyers",
        'exists(event.eventType == "commerce.purchases")',
        lambda v: v.exists(PURCHASE),
    ),
    Segment(
        "viewed-today",
        'exists(event.eventType == "commerce.productViews", within="1d")',
        lambda v: v.exists(VIEW, within="1d"),
    ),
    Segment(
        "many-views",
        'count(event.eventType == "commerce.productViews") >= 12',
        lambda v: v.count(VIEW) >= 12,
    ),
    Segment(
        "engaged-3d",
        'count(event.eventType == "commerce.productViews", within="3d") >= 3',
        lambda v: v.count(VIEW, within="3d") >= 3,
    ),
    Segment(
        "big-spenders",
        'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases") > 200',
        lambda v: v.sum("commerce.order.priceTotal", PURCHASE) > 200,
    ),
    Segment(
        "spent-this-week",
        'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases", '
        'within="7d") >= 100',
        lambda v: v.sum("commerce.order.priceTotal", PURCHASE, within="7d") >= 100,
    ),
    Segment(
        "cheap-cart-item",
        'min(event.productListItems.priceTotal, event.eventType == "commerce.productListAdds")'
        " <= 24",
        lambda v: le(v.min("productListItems.priceTotal", ADD), 24),
    ),
    Segment(
        "cheap-view-2d",
        'min(event.productListItems.priceTotal, event.eventType == "commerce.productViews", '
        'within="2d") < 20',
        lambda v: lt(v.min("productListItems.priceTotal", VIEW, within="2d"), 20),
    ),
    Segment(
        "big-basket",
        'max(event.productListItems.quantity, event.eventType == "commerce.purchases") > 2',
        lambda v: gt(v.max("productListItems.quantity", PURCHASE), 2),
    ),
    Segment(
        "pricey-order-5d",
        'max(event.commerce.order.priceTotal, event.eventType == "commerce.purchases", '
        'within="5d") > 120',
        lambda v: gt(v.max("commerce.order.priceTotal", PURCHASE, within="5d"), 120),
    ),
    Segment(
        "last-on-mobile",
        'last(event.device.type, event.eventType != "voice.intent") == "mobile"',
        lambda v: eq(
            v.last("device.type", lambda e: ne(values(e, "eventType"), "voice.intent")), "mobile"
        ),
    ),
    Segment(
        "last-voice-search-2d",
        'last(event.voice.intent, event.eventType == "voice.intent", within="2d")'
        ' == "search_products"',
        lambda v: eq(v.last("voice.intent", VOICE, within="2d"), "search_products"),
    ),
    # any-match through lists
    Segment(
        "hoodie-lookers",
        'exists(event.productListItems.SKU startswith "LLMH" '
        'or event.productListItems.SKU in ["LLWH05", "LLWH12"])',
        lambda v: v.exists(
            lambda e: (
                startswith(values(e, "productListItems.SKU"), "LLMH")
                or isin(values(e, "productListItems.SKU"), ["LLWH05", "LLWH12"])
            )
        ),
    ),
    Segment(
        "watch-buyers-7d",
        'exists(event.eventType == "commerce.purchases" and event.productListItems.SKU in '
        f'{json.dumps(WATCHES)}, within="7d")',
        lambda v: v.exists(
            lambda e: PURCHASE(e) and isin(values(e, "productListItems.SKU"), WATCHES),
            within="7d",
        ),
    ),
    Segment(
        "voice-fitness",
        'exists(event.eventType == "voice.intent" and event.voice.query contains "fitness")',
        lambda v: v.exists(lambda e: VOICE(e) and contains(values(e, "voice.query"), "fitness")),
    ),
    # absent
    Segment(
        "abandoned-cart",
        'absent(event.eventType == "commerce.purchases", '
        'after=event.eventType == "commerce.productListAdds", within="30m")',
        lambda v: v.absent(PURCHASE, after=ADD, within="30m"),
    ),
    Segment(
        "no-checkout-2h",
        'absent(event.eventType == "commerce.checkouts", '
        'after=event.eventType == "commerce.productListAdds", within="2h")',
        lambda v: v.absent(CHECKOUT, after=ADD, within="2h"),
    ),
    # segments of segments (of segments)
    Segment(
        "gold-buyers",
        f'profile.{LEVEL} == "gold" and in_segment("buyers")',
        lambda v: eq(v.profile(LEVEL), "gold") and v.in_segment("buyers"),
    ),
    Segment(
        "vip-attention",
        'in_segment("gold-or-platinum") and in_segment("abandoned-cart") '
        'or in_segment("gold-buyers") and in_segment("engaged-3d")',
        lambda v: (
            (v.in_segment("gold-or-platinum") and v.in_segment("abandoned-cart"))
            or (v.in_segment("gold-buyers") and v.in_segment("engaged-3d"))
        ),
    ),
    Segment(
        "buyers-not-big",
        'in_segment("buyers") and not in_segment("big-spenders")',
        lambda v: v.in_segment("buyers") and not v.in_segment("big-spenders"),
    ),
)

CONFIG_HEAD = """\
namespaces:
  - {name: CRMID, unique: true}
  - {name: LoyaltyId, unique: true}
  - {name: Email, unique: true, normalize: email}
  - {name: Phone, normalize: phone}
  - {name: VoiceId}
  - {name: ECID}
sources:
  - name: crm
    kind: profile
    path: crm.json
    priority: 20
    identities:
      _techmarketingdemos.systemIdentifier.crmId: CRMID
      personalEmail.address: Email
      mobilePhone.number: Phone
  - name: loyalty
    kind: profile
    path: loyalty.json
    priority: 10
    identities:
      _techmarketingdemos.systemIdentifier.loyaltyId: LoyaltyId
      _techmarketingdemos.systemIdentifier.crmId: CRMID
  - name: web
    kind: event
    path: web.jsonl
  - name: voice
    kind: event
    path: voice.jsonl
  - name: store
    kind: event
    path: store.jsonl
    event_type: commerce.purchases
    identities:
      _techmarketingdemos.systemIdentifier.loyaltyId: LoyaltyId
"""


def segments_yaml(segments: tuple[Segment, ...]) -> str:
    # JSON strings are YAML strings: no quoting surprises in the rules.
    lines = ["segments:"]
    for seg in segments:
        lines += [f"  - id: {seg.id}", f"    rule: {json.dumps(seg.rule)}"]
    return "\n".join(lines) + "\n"


def replay(config: Path, state: Path, changes: Path, workers: int) -> None:
    replay_files(config, state, workers, changes)


def members_of(profiles: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for p in profiles:
        for sid, held in p["segments"].items():
            if held["status"] == "entered":
                out[sid].add(p["profile_id"])
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("stream-batch-data")
    write_files(generate(PEOPLE, EVENTS, seed=SEED), data, junk=False)
    return data


@pytest.fixture(
    scope="module",
    params=[(1, None), (2, None), (1, "2h")],
    ids=["1-worker", "2-workers", "1-worker-lateness-2h"],
)
def run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, generated: Path
) -> dict[str, Any]:
    workers, lateness = request.param
    name = f"w{workers}-late{lateness or 0}"
    config = generated / f"{name}.yaml"
    text = CONFIG_HEAD + segments_yaml(SEGMENTS)
    if lateness:
        # Replay still ends with every timer up to the last event: the same batch answer.
        text += f"time: {{allowed_lateness: {lateness}}}\n"
    config.write_text(text)
    tmp = tmp_path_factory.mktemp(f"stream-batch-{name}")
    changes = tmp / "changes.jsonl"
    replay(config, tmp / "state", changes, workers)
    profiles = export(config, tmp / "state", tmp)
    oracle = evaluate(config, profiles, {s.id: s.batch for s in SEGMENTS})
    return {
        "name": name,
        "workers": workers,
        "profiles": profiles,
        "changes": read_jsonl(changes),
        "oracle": oracle,
    }


def test_every_record_has_a_profile(run: dict[str, Any]) -> None:
    oracle: BatchResult = run["oracle"]
    assert oracle.unplaced == []
    counts = {p["profile_id"]: p["events"]["count"] for p in run["profiles"]}
    assert counts == oracle.event_counts
    assert sum(counts.values()) == EVENTS


def test_attributes_follow_the_merge_policy(run: dict[str, Any]) -> None:
    oracle: BatchResult = run["oracle"]
    wrong = [
        p["profile_id"]
        for p in run["profiles"]
        if p["attributes"] != oracle.attributes[p["profile_id"]]
    ]
    assert wrong == []


def test_memberships_equal_the_batch_evaluation(run: dict[str, Any]) -> None:
    oracle: BatchResult = run["oracle"]
    stream = members_of(run["profiles"])
    total = len(run["profiles"])
    print(f"\n{run['name']}: {total} profiles, now = {oracle.now_ms}")
    print(f"  {'segment':<22} {'stream':>6} {'batch':>6}  only-stream only-batch")
    mismatched: dict[str, tuple[list[str], list[str]]] = {}
    for seg in SEGMENTS:
        got, want = stream.get(seg.id, set()), oracle.members[seg.id]
        print(
            f"  {seg.id:<22} {len(got):>6} {len(want):>6}  "
            f"{len(got - want):>11} {len(want - got):>10}"
        )
        if got != want:
            mismatched[seg.id] = (sorted(got - want)[:5], sorted(want - got)[:5])
    assert mismatched == {}


def test_every_segment_is_non_trivial(run: dict[str, Any]) -> None:
    oracle: BatchResult = run["oracle"]
    total = len(run["profiles"])
    trivial = {
        seg.id: len(oracle.members[seg.id])
        for seg in SEGMENTS
        if not 0 < len(oracle.members[seg.id]) < total
    }
    assert trivial == {}


def test_changes_alternate_and_have_unique_ids(run: dict[str, Any]) -> None:
    changes = run["changes"]
    assert changes
    # One worker writes the changes in the order they happen; with two, each worker's sink
    # writes its own, so the file interleaves them and `sequence` gives the order.
    assert alternate(changes, in_order=run["workers"] == 1)
    ids = Counter(c["id"] for c in changes)
    assert [i for i, n in ids.items() if n > 1] == []


def test_changes_end_in_the_exported_memberships(run: dict[str, Any]) -> None:
    """The last change of every (profile, segment) is its exported membership: nothing
    emitted is lost and nothing is left out."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for c in run["changes"]:
        key = (c["profile_id"], c["segment_id"])
        if key not in last or c["sequence"] > last[key]["sequence"]:
            last[key] = c
    folded: dict[str, set[str]] = defaultdict(set)
    for (pid, sid), change in last.items():
        if change["status"] == "entered":
            folded[sid].add(pid)
    assert dict(folded) == dict(members_of(run["profiles"]))


# ------------------------------------------------------------------ exact timers, one by one

TIMER_CONFIG = """\
namespaces:
  - {name: ECID}
sources:
  - name: web
    kind: event
    path: web.jsonl
segments:
  - id: abandoned-cart
    rule: 'absent(event.eventType == "commerce.purchases", after=event.eventType == "commerce.productListAdds", within="30m")'
  - id: viewed-twice-1h
    rule: 'count(event.eventType == "commerce.productViews", within="1h") >= 2'
"""
T = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (T + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def web_event(event_id: str, ecid: str, event_type: str, minutes: int) -> dict[str, Any]:
    return {
        "_id": event_id,
        "timestamp": at(minutes),
        "eventType": event_type,
        "identityMap": {"ECID": [{"id": ecid, "primary": True}]},
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_windows_close_by_timer_at_the_exact_time(tmp_path: Path, workers: int) -> None:
    cart, other = "11111111111111111111", "22222222222222222222"
    events = [
        web_event("add", cart, "commerce.productListAdds", 0),
        web_event("v1", cart, "commerce.productViews", 1),
        web_event("v2", cart, "commerce.productViews", 11),
        web_event("o1", other, "web.webpagedetails.pageViews", 45),  # event time moves on
        web_event("o2", other, "web.webpagedetails.pageViews", 180),
    ]
    (tmp_path / "web.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    config = tmp_path / "cdp.yaml"
    config.write_text(TIMER_CONFIG)
    changes_file = tmp_path / "changes.jsonl"
    replay(config, tmp_path / "state", changes_file, workers)
    changes = [
        (c["segment_id"], c["status"], c["event_time"], c["reason"])
        for c in read_jsonl(changes_file)
        if c["identities"] == {"ECID": [cart]}
    ]
    assert sorted(changes) == sorted(
        [
            # the cart added at T, no purchase: in the audience at exactly T+30m, by timer
            ("abandoned-cart", "entered", at(30), "timer"),
            ("viewed-twice-1h", "entered", at(11), "event:v2"),
            # the view at T+1m leaves the 1h window at exactly T+61m
            ("viewed-twice-1h", "exited", at(61), "timer"),
        ]
    )


# --------------------------------------------- absent(): what pruning must keep for later

ABSENT_CONFIG = """\
namespaces:
  - {name: Email, unique: true, normalize: email}
  - {name: ECID}
sources:
  - name: web
    kind: event
    path: web.jsonl
  - name: carts
    kind: event
    path: carts.jsonl
segments:
  - id: abandoned-cart
    rule: 'absent(event.eventType == "commerce.purchases", after=event.eventType == "commerce.productListAdds", within="30m")'
"""
ABANDONED = {"abandoned-cart": lambda v: v.absent(PURCHASE, after=ADD, within="30m")}


def event(event_id: str, minutes: int, event_type: str, **identities: str) -> dict[str, Any]:
    return {
        "_id": event_id,
        "timestamp": at(minutes),
        "eventType": event_type,
        "identityMap": {ns: [{"id": value}] for ns, value in identities.items()},
    }


def abandoned_after_replay(
    tmp: Path, web: list[dict[str, Any]], carts: list[dict[str, Any]]
) -> tuple[set[str], set[str]]:
    """(stream members, batch members) of abandoned-cart; web.jsonl is read before carts."""
    for name, rows in (("web", web), ("carts", carts)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp / "cdp.yaml"
    config.write_text(ABSENT_CONFIG)
    replay(config, tmp / "state", tmp / "changes.jsonl", 1)
    profiles = export(config, tmp / "state", tmp)
    batch = evaluate(config, profiles, ABANDONED).members["abandoned-cart"]
    return members_of(profiles).get("abandoned-cart", set()), batch


def test_absent_keeps_what_a_merge_needs(tmp_path: Path) -> None:
    """A purchase on an anonymous device 10 minutes after the cart add of the logged-in
    person it turns out to be: no abandoned cart, however long the login takes."""
    web = [
        event("add", 90, "commerce.productListAdds", Email="x@example.com"),
        event("buy", 100, "commerce.purchases", ECID="e2"),
        event("other", 200, "web.webpagedetails.pageViews", ECID="z"),
        # the device's profile is evaluated (and pruned) again, long after its purchase
        event("browse", 201, "web.webpagedetails.pageViews", ECID="e2"),
        event("login", 210, "userAccount.login", Email="x@example.com", ECID="e2"),
    ]
    stream, batch = abandoned_after_replay(tmp_path, web, [])
    assert batch == set()
    assert stream == batch


def test_absent_keeps_what_a_late_cart_add_needs(tmp_path: Path) -> None:
    """The cart add is read after (from a later file than) the purchase that followed it."""
    web = [
        event("buy", 100, "commerce.purchases", ECID="e"),
        event("browse", 201, "web.webpagedetails.pageViews", ECID="e"),
    ]
    carts = [event("add", 90, "commerce.productListAdds", ECID="e")]
    stream, batch = abandoned_after_replay(tmp_path, web, carts)
    assert batch == set()
    assert stream == batch
