"""The events: web and app sessions, voice-assistant sessions, store purchases, and their times.

A device is anonymous (only its ECID) until someone logs in on it: the `userAccount.login` event
carries the ECID and the person's Email, which is how devices join the person. Voice assistants
join through an account-link intent that carries the VoiceId and the Email; store purchases
carry only a loyalty id. Events get their timestamps when their sessions are placed in time.
"""

from __future__ import annotations

import bisect
import random
import time

from flows.generator.draws import pick, purchase_id, uuid
from flows.generator.people import Person
from flows.generator.tables import (
    DAY_MS,
    GROUPS,
    OTHER_INTENTS,
    PAGES,
    PRODUCTS,
    SPAN_DAYS,
    SPAN_MS,
    Json,
)

_CATALOG = tuple(range(len(PRODUCTS)))
_LOGIN = "userAccount.login"
_PAGE_VIEW = "web.webpagedetails.pageViews"
_PURCHASE = "commerce.purchases"


def web_sessions(
    rng: random.Random,
    person: Person,
    budget: int,
    *,
    forced_device: str | None,
    start_ms: int,
    out: list[tuple[int, Json]],
) -> None:
    """`budget` web and app events of one person, as (time, event) rows appended to `out`.

    A shared tablet comes in as `forced_device`: the first session is on it, with a login, so
    each of its two people is linked to it.
    """
    sessions: list[list[Json]] = []
    remaining = budget
    ecids = person.ecids
    # The first device is the main one: 60 %, then 30 %, then 10 % each.
    cumulative = (0.6, 0.9, 1.0, 1.1)[: len(ecids)]
    last = len(ecids) - 1
    rand = rng.random
    while remaining > 0:
        if forced_device is not None:
            device, force_login = forced_device, True
            forced_device = None
        else:
            r = rand() * cumulative[-1]
            device = ecids[min(bisect.bisect_right(cumulative, r), last)]
            force_login = False
        session = _web_session(rng, person, device, force_login, remaining)
        remaining -= len(session)
        sessions.append(session)
    _place_in_time(rng, sessions, start_ms, min_gap_s=3, max_gap_s=90, out=out)


def _web_session(
    rng: random.Random, person: Person, ecid: str, force_login: bool, limit: int
) -> list[Json]:
    """One visit: pages, product views, sometimes a cart, checkout and purchase.

    The visit is planned first and only its first `limit` steps are built: the person's budget
    may end in the middle of it.
    """
    rand = rng.random
    logged_in = ecid in person.logged_in
    products, _ = GROUPS[person.group]
    n_products, n_catalog = len(products), len(PRODUCTS)
    plan: list[tuple[str, list[tuple[int, int]] | None]] = []
    if force_login or rand() < (0.03 if logged_in else 0.12):
        plan.append((_LOGIN, None))
        logged_in = True
    for _ in range(1 + (rand() < 0.4)):
        plan.append((_PAGE_VIEW, None))
    viewed: list[int] = []
    for _ in range(1 + int(rand() * 4)):
        product = products[int(rand() * n_products)] if rand() < 0.7 else int(rand() * n_catalog)
        viewed.append(product)
        plan.append(("commerce.productViews", [(product, 1)]))
    if rand() < 0.35:
        cart: list[tuple[int, int]] = []
        for product in dict.fromkeys(viewed):  # distinct, in viewing order
            if not cart or rand() < 0.4:
                item = (product, 1 + (rand() < 0.2))
                cart.append(item)
                plan.append(("commerce.productListAdds", [item]))
        if rand() < 0.55:  # else the cart is abandoned
            if not logged_in and rand() < 0.9:
                plan.append((_LOGIN, None))
            plan.append(("commerce.checkouts", cart))
            if rand() < 0.8:
                plan.append((_PURCHASE, cart))

    kind = person.device_kinds[person.ecids.index(ecid)]
    events: list[Json] = []
    for event_type, items in plan[:limit]:
        if event_type == _LOGIN:
            events.append(_login(rng, ecid, person.email, kind))
            person.logged_in.add(ecid)
            continue
        event = _web_event(rng, event_type, ecid, kind, items)
        if event_type == _PURCHASE and items is not None:
            event["commerce"]["order"] = {
                "purchaseID": purchase_id(rng),
                "priceTotal": _total(items),
                "currencyCode": "USD",
            }
        events.append(event)
    return events


def _login(rng: random.Random, ecid: str, email: str, kind: str) -> Json:
    return {
        "_id": uuid(rng),
        "timestamp": "",
        "eventType": _LOGIN,
        "identityMap": {
            "ECID": [{"id": ecid, "primary": False}],
            "Email": [{"id": email, "primary": True}],
        },
        "device": {"type": kind},
        "userAccount": {"login": {"value": 1}},
    }


def _web_event(
    rng: random.Random,
    event_type: str,
    ecid: str,
    kind: str,
    items: list[tuple[int, int]] | None,
) -> Json:
    event: Json = {
        "_id": uuid(rng),
        "timestamp": "",
        "eventType": event_type,
        "identityMap": {"ECID": [{"id": ecid, "primary": True}]},
        "device": {"type": kind},
    }
    if items is None:
        page = PAGES[int(rng.random() * len(PAGES))]
        if kind == "mobile":
            event["application"] = {"name": "Luma", "screen": page}
        else:
            event["web"] = {
                "webPageDetails": {"name": page, "URL": f"https://luma.example.com/{page}"}
            }
        return event
    event["commerce"] = {event_type.removeprefix("commerce."): {"value": 1}}
    event["productListItems"] = [
        {
            "SKU": PRODUCTS[i][0],
            "name": PRODUCTS[i][1],
            "category": PRODUCTS[i][2],
            "priceTotal": round(PRODUCTS[i][3] * qty, 2),
            "quantity": qty,
        }
        for i, qty in items
    ]
    return event


def voice_sessions(
    rng: random.Random,
    person: Person,
    budget: int,
    start_ms: int,
    out: list[tuple[int, Json]],
) -> None:
    """`budget` voice events of one speaker owner; the first session links the account."""
    assert person.voice_id is not None  # only speaker owners get a voice budget
    voice_id = person.voice_id
    _, queries = GROUPS[person.group]
    sessions: list[list[Json]] = []
    remaining = budget
    linked = False
    while remaining > 0:
        session: list[Json] = []
        if not linked or rng.random() < 0.03:  # the account link, and the odd re-link
            session.append(_voice_event(rng, voice_id, person.email, {"intent": "link_account"}))
            linked = True
        for _ in range(1 + int(rng.random() * 3)):
            if rng.random() < 0.75:
                query = pick(rng, queries) if rng.random() < 0.8 else pick(rng, GROUPS)[1][0]
                body = {"intent": "search_products", "query": query}
            else:
                body = {"intent": pick(rng, OTHER_INTENTS)}
            session.append(_voice_event(rng, voice_id, None, body))
        session = session[:remaining]
        remaining -= len(session)
        sessions.append(session)
    _place_in_time(rng, sessions, start_ms, min_gap_s=5, max_gap_s=40, out=out)


def _voice_event(rng: random.Random, voice_id: str, email: str | None, voice: Json) -> Json:
    identity_map: Json = {"VoiceId": [{"id": voice_id, "primary": True}]}
    if email is not None:
        identity_map["Email"] = [{"id": email, "primary": False}]
    return {
        "_id": uuid(rng),
        "timestamp": "",
        "eventType": "voice.intent",
        "identityMap": identity_map,
        "device": {"type": "smart_speaker"},
        "voice": voice,
    }


def store_purchase(rng: random.Random, person: Person, start_ms: int) -> tuple[int, Json]:
    """One till receipt of a loyalty member, with its time (stores keep no sessions)."""
    products, _ = GROUPS[person.group]
    cart: list[tuple[int, int]] = []
    for _ in range(1 + int(rng.random() * 3)):
        product = pick(rng, products) if rng.random() < 0.6 else pick(rng, _CATALOG)
        cart.append((product, 1 + int(rng.random() * 3)))
    # Opening hours, 09:00-21:00 UTC, on one of the days.
    ts = start_ms + int(rng.random() * SPAN_DAYS) * DAY_MS + 9 * 3_600_000
    ts += int(rng.random() * 12 * 3_600_000)
    body = {
        "_techmarketingdemos": {"systemIdentifier": {"loyaltyId": person.loyalty_id}},
        "commerce": {"order": {"purchaseID": purchase_id(rng), "priceTotal": _total(cart)}},
        "productListItems": [{"SKU": PRODUCTS[i][0], "quantity": qty} for i, qty in cart],
        "timestamp": _iso(ts),
        "_id": uuid(rng),
    }
    return ts, body


def _place_in_time(
    rng: random.Random,
    sessions: list[list[Json]],
    start_ms: int,
    *,
    min_gap_s: int,
    max_gap_s: int,
    out: list[tuple[int, Json]],
) -> None:
    """Session starts spread over the span, in generation order (so logins keep their order)."""
    latest = SPAN_MS - 2 * 3_600_000  # a session never runs past the end
    starts = sorted(int(rng.random() * latest) for _ in sessions)
    low, high = min_gap_s * 1000, max_gap_s * 1000
    width = high - low
    rand = rng.random
    for begin, session in zip(starts, sessions, strict=True):
        ts = start_ms + begin
        for event in session:
            event["timestamp"] = _iso(ts)
            out.append((ts, event))
            ts += low + int(rand() * width)


def in_time_order(rows: list[tuple[int, Json]]) -> list[Json]:
    """The events of one file, by time; sorts `rows` in place (it is not needed afterwards)."""
    rows.sort(key=_first)  # stable: equal times keep their generation order
    return [event for _, event in rows]


def _first(row: tuple[int, Json]) -> int:
    return row[0]


# Day number -> "YYYY-MM-DD", kept between runs: a span has a handful of days, and the same
# day always gives the same text, so the cache cannot change the output.
_DAYS: dict[int, str] = {}


def _iso(ts_ms: int) -> str:
    """`2026-11-01T09:00:22.862Z`; the date part is cached, the clock part is arithmetic."""
    day, in_day = divmod(ts_ms, DAY_MS)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
    seconds, millis = divmod(in_day, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def _total(cart: list[tuple[int, int]]) -> float:
    return round(sum(PRODUCTS[i][3] * qty for i, qty in cart), 2)
