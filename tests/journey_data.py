"""Data and config for the journey end-to-end tests (issue #16): people with a CRM record
(first name, tier) and a web stream of page views, cart adds (with their items) and purchases,
some during a journey's wait. Deterministic for a seed.

With `anonymous_every`, some people browse with their device only at first. Their records
are keyed on another shard than their identified ones, so on several workers a replay may
apply them out of event-time order, and such a person's journey may go differently (known,
not tested as equal). A segment-triggered journey (`welcome`) enters when event time reaches
the segment's change, which on several workers can come after later steps of the person's
event-triggered journeys (a cap between them, or a same-millisecond exit and re-entry, then
differs); the equality tests use the event-triggered cart journey.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

NAMES = ("Ann", "Bea", "Cy", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jo")
MIN = 60_000
ADD = "commerce.productListAdds"
BUY = "commerce.purchases"
VIEW = "web.webpagedetails.pageViews"

# The abandoned cart; a segment-triggered welcome and a cap are added by `journeys_yaml`.
CAPS = "journey_caps: {per_profile: 2, per: 3h}\n"
JOURNEYS = """\
journeys:
  - id: cart-reminder
    trigger: {{event: 'event.eventType == "{add}"'}}
    exit_when: 'exists(event.eventType == "{buy}", within="2d")'
    late: {late}
    priority: 10
    steps:
      - wait: {wait}
      - send: {{destination: email, message: cart-1}}
      - wait: 2h
      - if: 'profile.tier == "vip"'
        then: [{{send: {{destination: email, message: cart-vip}}}}]
        else: [{{send: {{destination: email, message: cart-2}}}}]
"""
WELCOME = """\
  - id: welcome
    trigger: {{segment: browsers}}
    late: {late}
    steps:
      - send: {{destination: {destination}, message: welcome}}
"""
SEGMENTS = """\
segments:
  - {id: browsers, rule: 'count(event.eventType == "web.webpagedetails.pageViews", within="1h") >= 3'}
"""


def journeys_yaml(
    late: str = "skip", wait: str = "30m", *, welcome: str = "", caps: bool = False
) -> str:
    """The cart journey; with `welcome` (a destination), the welcome journey too; with
    `caps`, a cap over both."""
    text = JOURNEYS.format(add=ADD, buy=BUY, late=late, wait=wait)
    if welcome:
        text += WELCOME.format(late=late, destination=welcome)
    return (CAPS if caps else "") + text


def email(i: int) -> str:
    return f"u{i}@example.com"


def crm_record(i: int) -> dict[str, Any]:
    return {
        "email": email(i),
        "tier": "vip" if i % 4 == 0 else "basic",
        "person": {"name": {"firstName": NAMES[i % len(NAMES)]}},
    }


def event(
    eid: str,
    kind: str,
    ts_ms: int,
    i: int,
    *,
    anonymous: bool = False,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    ids: dict[str, Any] = {"ECID": [{"id": f"d{i}"}]}
    if not anonymous:
        ids["Email"] = [{"id": email(i)}]
    body: dict[str, Any] = {"_id": eid, "eventType": kind, "timestamp": ts_ms, "identityMap": ids}
    if items is not None:
        body["productListItems"] = items
    return body


def cart_items(rng: random.Random, i: int, n: int) -> list[dict[str, Any]]:
    return [
        {"SKU": f"SKU-{rng.randrange(40):02d}", "quantity": rng.randint(1, 3), "name": f"p{i}"}
        for _ in range(n)
    ]


def stream(
    people: int, start_ms: int, seed: int, hours: int = 8, anonymous_every: int = 0
) -> list[dict[str, Any]]:
    """Web events of `people` people over `hours`, in time order: sessions of page views, a
    cart add in about half of them, a purchase after some adds (often within the wait). With
    `anonymous_every` n, every n-th person's first session is anonymous (the device only)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(people):
        n = 0
        for session in range(rng.randint(1, 4)):
            at = start_ms + rng.randrange(hours * 60) * MIN
            anonymous = session == 0 and anonymous_every > 0 and i % anonymous_every == 0
            for _ in range(rng.randint(1, 4)):
                n += 1
                at += rng.randint(1, 5) * MIN
                out.append(event(f"e{i}-{n}", VIEW, at, i, anonymous=anonymous))
            if rng.random() < 0.6:
                n += 1
                at += rng.randint(1, 5) * MIN
                items = cart_items(rng, i, rng.randint(1, 3))
                out.append(event(f"e{i}-{n}", ADD, at, i, anonymous=anonymous, items=items))
                if rng.random() < 0.4:
                    n += 1
                    at += rng.randint(1, 90) * MIN
                    out.append(event(f"e{i}-{n}", BUY, at, i, anonymous=anonymous))
    out.sort(key=lambda e: (e["timestamp"], e["_id"]))
    return out


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def write_data(
    directory: Path, people: int, start_ms: int, seed: int, anonymous_every: int = 0
) -> list[dict[str, Any]]:
    """crm.jsonl and web.jsonl in `directory`; returns the web events."""
    directory.mkdir(parents=True, exist_ok=True)
    web = stream(people, start_ms, seed, anonymous_every=anonymous_every)
    (directory / "crm.jsonl").write_bytes(jsonl([crm_record(i) for i in range(people)]))
    (directory / "web.jsonl").write_bytes(jsonl(web))
    return web


def comparable(send: dict[str, Any]) -> bytes:
    """A send as a destination received it, but for when it was made (`emitted_at`)."""
    assert send["type"] == "journey_send", send
    return orjson.dumps(
        {k: v for k, v in send.items() if k != "emitted_at"}, option=orjson.OPT_SORT_KEYS
    )


def is_send(row: dict[str, Any]) -> bool:
    return row.get("type") == "journey_send"
