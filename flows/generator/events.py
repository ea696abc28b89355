"""A seeded generator of a Luma-like retail stream (DESIGN §9).

People with Zipf-distributed activity browse the web shop and the app on 1-3 devices each.
A device is anonymous (only its ECID) until someone logs in on it: the `userAccount.login`
event carries the ECID and the person's Email, which is how devices join the person. Voice
assistants join through an account-link intent that carries the VoiceId and the Email, store
purchases carry only a loyalty id, and the CRM and loyalty exports tie the rest together, with
the gaps real exports have (null emails and phones, null crmIds, emails that differ from the
login in case and whitespace). A couple of family tablets are shared by two people.

Deterministic for a given seed: one `random.Random`, no wall clock, no hash-ordered iteration.
Self-contained: the product catalog below is copied from `shared/data/luma/luma-products.json`
so the demo needs nothing outside this tree.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

Json = dict[str, Any]

DAY_MS = 86_400_000
SPAN_DAYS = 14
SPAN_MS = SPAN_DAYS * DAY_MS
JUNK_LINES = 5  # bad lines `write_files(junk=True)` puts into web.jsonl
ZIPF_EXPONENT = 0.85
ZIPF_OFFSET = 3.0  # Zipf-Mandelbrot: keeps the very top from being a single bot-like profile

SOURCE_FILES = {
    "crm": "crm.json",
    "loyalty": "loyalty.json",
    "web": "web.jsonl",
    "voice": "voice.jsonl",
    "store": "store.jsonl",
}

# (SKU, name, category, price) from luma-products.json; the group index picks voice queries.
PRODUCTS: tuple[tuple[str, str, str, float], ...] = (
    ("LLMS01", "Aero Daily Fitness Tee", "men:tops:tees", 24.0),
    ("LLWS05", "Desiree Fitness Tee", "women:tops:tees", 24.0),
    ("LLWS01", "Gwyn Endurance Tee", "women:tops:tees", 24.0),
    ("LLMS08", "Strike Endurance Tee", "men:tops:tees", 39.0),
    ("LLWS11", "Diva Gym Tee", "women:tops:tees", 32.0),
    ("LLWS10", "Karissa V-Neck Tee", "women:tops:tees", 32.0),
    ("LLWS12", "Radiant Tee", "women:tops:tees", 22.0),
    ("LLMT11", "Atlas Fitness Tank", "men:tops:tanks", 18.0),
    ("LLMT09", "Sinbad Fitness Tank", "men:tops:tanks", 29.0),
    ("LLMT08", "Sparta Gym Tank", "men:tops:tanks", 29.0),
    ("LLWT08", "Antonia Racer Tank", "women:tops:bras_tanks", 34.0),
    ("LLWB05", "Lucia Cross-Fit Bra", "women:tops:bras_tanks", 39.0),
    ("LLMP12", "Cronus Yoga Pant", "men:bottoms:pants", 38.4),
    ("LLMP10", "Orestes Yoga Pant", "men:bottoms:pants", 52.8),
    ("LLMP08", "Zeppelin Yoga Pant", "men:bottoms:pants", 65.6),
    ("LLWP10", "Daria Bikram Pant", "women:bottoms:pants", 40.8),
    ("LLWP11", "Sylvia Capri", "women:bottoms:pants", 33.6),
    ("LLWSH10", "Ana Running Short", "women:bottoms:shorts", 40.0),
    ("LLWSH12", "Erika Running Short", "women:bottoms:shorts", 45.0),
    ("LLMSH12", "Pierce Gym Short", "men:bottoms:shorts", 27.0),
    ("LLMSH09", "Troy Yoga Short", "men:bottoms:shorts", 24.0),
    ("LLMH09", "Abominable Hoodie", "men:tops:hoodies_sweatshirts", 69.0),
    ("LLMH10", "Mach Street Sweatshirt", "men:tops:hoodies_sweatshirts", 62.0),
    ("LLWH05", "Selene Yoga Hoodie", "women:tops:hoodies", 42.0),
    ("LLWH12", "Circe Hooded Ice Fleece", "women:tops:hoodies", 68.0),
    ("LLWJ08", "Adrienne Trek Jacket", "women:tops:jackets", 57.0),
    ("LLWJ09", "Jade Yoga Jacket", "women:tops:jackets", 32.0),
    ("LLMJ03", "Montana Wind Jacket", "men:tops:jackets", 49.0),
    ("LLMJ06", "Jupiter All-Weather Trainer", "men:tops:jackets", 56.99),
    ("24-UG06", "Affirm Water Bottle", "products:gear:fitness", 7.0),
    ("24-UG04", "Zing Jump Rope", "products:gear:fitness", 12.0),
    ("24-WG088", "Sprite Foam Roller", "products:gear:fitness", 19.0),
    ("24-WG080", "Sprite Yoga Companion Kit", "products:gear:fitness", 61.0),
    ("24-UG05", "Go-Get'r Pushup Grips", "products:gear:fitness", 19.0),
    ("24-MG01", "Endurance Watch", "products:gear:watches", 49.0),
    ("24-MG02", "Dash Digital Watch", "products:gear:watches", 92.0),
    ("24-WG02", "Didi Sport Watch", "products:gear:watches", 99.0),
    ("24-WB04", "Push It Messenger Bag", "products:gear:bags", 45.0),
    ("24-UB02", "Impulse Duffle", "products:gear:bags", 74.0),
    ("Luma-24-MB02", "Fusion Backpack", "products:gear:bags", 59.0),
)

# Interest groups: (product indexes, what such a person asks the voice assistant for).
_GROUPS: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    (tuple(range(12)), ("fitness shirts", "fitness shirts", "running tank", "gym tee")),
    (tuple(range(12, 21)), ("yoga pants", "yoga pants", "running shorts")),
    (tuple(range(21, 29)), ("hoodies", "rain jacket")),
    (tuple(range(29, 40)), ("water bottle", "running shoes", "sports watch", "gym bag")),
)

# fmt: off
_FIRST_NAMES: tuple[tuple[str, str | None], ...] = (
    ("Danny", "male"), ("Claudian", "male"), ("Romy", "female"), ("Morris", "male"),
    ("Dulcy", None), ("Kate", "female"), ("Bill", "male"), ("Liz", "female"),
    ("Tom", "male"), ("Ana", "female"), ("Jorge", "male"), ("Mei", "female"),
    ("Priya", "female"), ("Omar", "male"), ("Sofia", "female"), ("Lukas", "male"),
    ("Aisha", "female"), ("Noah", "male"), ("Elena", "female"), ("Kenji", "male"),
    ("Fatima", "female"), ("Marco", "male"), ("Ingrid", "female"), ("Tariq", "male"),
    ("Chloe", None), ("Diego", "male"), ("Hana", "female"), ("Sam", None),
    ("Nadia", "female"), ("Pavel", "male"), ("Grace", "female"), ("Ravi", "male"),
)
_NICKNAMES = {
    "Danny": "Daniel", "Kate": "Katherine", "Bill": "William", "Liz": "Elizabeth",
    "Tom": "Thomas", "Sam": "Samantha",
}
_LAST_NAMES = (
    "Wright", "Smartman", "Soppett", "Aitkenhead", "Satterthwaite", "Garcia", "Nguyen",
    "Okafor", "Schmidt", "Rossi", "Kowalski", "Tanaka", "Haddad", "Silva", "Johansson",
    "Murphy", "Patel", "Chen", "Dubois", "Novak", "Fischer", "Moreau", "Kim", "Lopez",
    "Andersen", "Costa", "Brennan", "Yilmaz", "Ivanova", "Mensah",
)
_CITIES = (
    "Portland", "New York City", "Seattle", "Denver", "Austin", "Chicago", "Boston",
    "San Jose", "Miami", "Atlanta", "Phoenix", "Minneapolis", "Salt Lake City", "Madison",
    "Carahue", "Loja", "Tamanan", "Yinyang",
)
# fmt: on
_DOMAINS = ("example.com", "example.org", "example.net")
_PAGES = ("home", "men", "women", "gear", "sale", "search", "new-arrivals", "yoga-collection")
_LEVELS = ("bronze", "silver", "gold", "platinum")
_LEVEL_WEIGHTS = (0.35, 0.30, 0.22, 0.13)
_OTHER_INTENTS = ("order_status", "store_hours", "add_to_list")
_BASE36 = bytes(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(256))
_CATALOG = tuple(range(len(PRODUCTS)))
_T = TypeVar("_T")
_LOGIN = "userAccount.login"
_PAGE_VIEW = "web.webpagedetails.pageViews"
_PURCHASE = "commerce.purchases"

P_CRM = 0.8
P_LOYALTY = 0.5
P_SPEAKER = 0.25
P_CRM_NO_CONTACT = 0.10  # CRM rows with null email and phone
P_CRM_EMAIL_VARIANT = 0.12  # CRM email differs in case/whitespace from the login
P_LOYALTY_CRM_LOST = 0.03  # loyalty rows of CRM people whose crmId is still null
P_STORE = 0.12  # of a loyalty member's events
P_VOICE = 0.20  # of a speaker owner's events


@dataclass(frozen=True)
class GeneratedStream:
    crm: list[Json]  # profile records, shaped like luma-crm.json
    loyalty: list[Json]  # profile records, shaped like luma-loyalty.json
    web: list[Json]  # XDM ExperienceEvents from web and app, time-ordered
    voice: list[Json]  # voice-assistant events, time-ordered
    store: list[Json]  # store purchases, like luma-offline-purchases.json, time-ordered
    # person index -> {"crm_id", "email", "phone", "loyalty_id", "ecids", "voice_id"},
    # plus "shared_devices": [ecid, ...]
    truth: dict[int | str, Any] = field(repr=False)


@dataclass(slots=True)
class _Person:
    index: int
    first: str
    gender: str | None
    last: str
    email: str  # normalised, as the person types it at login
    phone: str
    city: str
    group: int
    ecids: list[str]
    device_kinds: list[str]
    crm_id: str | None = None
    loyalty_id: int | None = None
    voice_id: str | None = None
    logged_in: set[str] = field(default_factory=set)  # membership tests only, never iterated


def generate(
    people: int, events: int, seed: int = 7, start: str = "2026-11-01T00:00:00Z"
) -> GeneratedStream:
    """`events` events in all (web + voice + store) from `people` people over 14 days."""
    if people < 1:
        raise ValueError("people must be at least 1")
    if events < 0:
        raise ValueError("events must not be negative")
    # Nothing built here forms a cycle, but the cyclic collector would rescan the growing heap
    # of fresh dicts again and again (about half the run time at 500,000 events).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _generate(people, events, random.Random(seed), _epoch_ms(start))
    finally:
        if collecting:
            gc.enable()


def _generate(people: int, events: int, rng: random.Random, start_ms: int) -> GeneratedStream:
    persons = [_make_person(rng, i) for i in range(people)]
    _assign_profiles(rng, persons)
    budgets = _activity(rng, people, events)

    store_budget = [0] * people
    voice_budget = [0] * people
    web_budget = [0] * people
    rand = rng.random
    for person, budget in zip(persons, budgets, strict=True):
        p_store = P_STORE if person.loyalty_id is not None else 0.0
        p_voice = P_VOICE if person.voice_id is not None else 0.0
        n_store = n_voice = 0
        for _ in range(budget):
            r = rand()
            if r < p_store:
                n_store += 1
            elif r < p_store + p_voice:
                n_voice += 1
        i = person.index
        store_budget[i], voice_budget[i] = n_store, n_voice
        web_budget[i] = budget - n_store - n_voice

    shared = _share_tablets(rng, persons, web_budget)
    first_device = {p: ecid for ecid, pair in shared for p in pair}

    web_rows: list[tuple[int, Json]] = []
    voice_rows: list[tuple[int, Json]] = []
    store_rows: list[tuple[int, Json]] = []
    for person in persons:
        i = person.index
        if web_budget[i]:
            _web_sessions(
                rng,
                person,
                web_budget[i],
                forced_device=first_device.get(i),
                start_ms=start_ms,
                out=web_rows,
            )
        if voice_budget[i]:
            _voice_sessions(rng, person, voice_budget[i], start_ms, voice_rows)
        for _ in range(store_budget[i]):
            store_rows.append(_store_purchase(rng, person, start_ms))

    truth: dict[int | str, Any] = {
        p.index: {
            "crm_id": p.crm_id,
            "email": p.email,
            "phone": p.phone,
            "loyalty_id": p.loyalty_id,
            "ecids": list(p.ecids),
            "voice_id": p.voice_id,
        }
        for p in persons
    }
    truth["shared_devices"] = [ecid for ecid, _ in shared]
    return GeneratedStream(
        crm=_crm_rows(rng, persons),
        loyalty=_loyalty_rows(rng, persons),
        web=_in_time_order(web_rows),
        voice=_in_time_order(voice_rows),
        store=_in_time_order(store_rows),
        truth=truth,
    )


def write_files(stream: GeneratedStream, directory: Path, junk: bool = True) -> dict[str, Path]:
    """crm.json and loyalty.json (JSON arrays), web/voice/store.jsonl (JSON lines).

    With `junk`, `JUNK_LINES` bad lines are spread through web.jsonl so a run shows dead letters.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / file for name, file in SOURCE_FILES.items()}
    paths["crm"].write_bytes(orjson.dumps(stream.crm) + b"\n")
    paths["loyalty"].write_bytes(orjson.dumps(stream.loyalty) + b"\n")
    junk_at: dict[int, list[bytes]] = {}
    if junk:
        step = len(stream.web) // (JUNK_LINES + 1)
        for k, line in enumerate(_junk_lines(stream), start=1):
            junk_at.setdefault(k * step, []).append(line)
    _write_lines(paths["web"], stream.web, junk_at)
    _write_lines(paths["voice"], stream.voice, {})
    _write_lines(paths["store"], stream.store, {})
    return paths


# --- people and profile records -------------------------------------------------------------


def _make_person(rng: random.Random, index: int) -> _Person:
    first, gender = _pick(rng, _FIRST_NAMES)
    last = _pick(rng, _LAST_NAMES)
    email = f"{first[0]}{last}{index}@{_pick(rng, _DOMAINS)}".lower()
    # Unique up to 8 million people: the area code carries the ten-thousands.
    phone = f"{200 + (index // 10_000) % 800}-555-{index % 10_000:04d}"
    r = rng.random()
    devices = 1 if r < 0.5 else (2 if r < 0.85 else 3)
    ecids = [_ecid(rng) for _ in range(devices)]
    # A desktop browses the web shop, a mobile uses the Luma app.
    kinds = ["desktop" if rng.random() < 0.55 else "mobile"]
    kinds += ["mobile" if kinds[0] == "desktop" else "desktop", "tablet"]
    return _Person(
        index=index,
        first=first,
        gender=gender,
        last=last,
        email=email,
        phone=phone,
        city=_pick(rng, _CITIES),
        group=int(rng.random() * len(_GROUPS)),
        ecids=ecids,
        device_kinds=kinds[:devices],
    )


def _assign_profiles(rng: random.Random, persons: list[_Person]) -> None:
    loyal = [p for p in persons if rng.random() < P_LOYALTY]
    # Seven-digit ids like the real export, unique, drawn without replacement.
    pool = range(1_000_000, 1_000_000 + max(9_000_000, 10 * len(persons)))
    for person, loyalty_id in zip(loyal, rng.sample(pool, len(loyal)), strict=True):
        person.loyalty_id = loyalty_id
    for person in persons:
        if rng.random() < P_CRM:
            person.crm_id = rng.randbytes(32).translate(_BASE36).decode("ascii")
        if rng.random() < P_SPEAKER:
            person.voice_id = f"vas.account.{rng.getrandbits(96):024X}"


def _crm_rows(rng: random.Random, persons: list[_Person]) -> list[Json]:
    rows: list[Json] = []
    for p in persons:
        if p.crm_id is None:
            continue
        email: str | None = p.email
        phone: str | None = p.phone
        r = rng.random()
        if r < P_CRM_NO_CONTACT:
            email = phone = None
        elif r < P_CRM_NO_CONTACT + P_CRM_EMAIL_VARIANT:
            local, domain = p.email.split("@")
            cased = local[0].upper() + local[1].upper() + local[2:]
            email = f" {cased}@{domain.capitalize()} "
        rows.append(
            {
                "_techmarketingdemos": {"systemIdentifier": {"crmId": p.crm_id}},
                "person": {
                    "name": {"firstName": p.first, "lastName": p.last},
                    "gender": p.gender,
                },
                "personalEmail": {"address": email},
                "mobilePhone": {"number": phone},
                "homeAddress": {"city": p.city},
                "consents": {"marketing": {"email": {"val": "y" if rng.random() < 0.7 else "n"}}},
            }
        )
    return rows


def _loyalty_rows(rng: random.Random, persons: list[_Person]) -> list[Json]:
    rows: list[Json] = []
    for p in persons:
        if p.loyalty_id is None:
            continue
        crm_id = p.crm_id if rng.random() >= P_LOYALTY_CRM_LOST else None
        first = _NICKNAMES.get(p.first, p.first) if rng.random() < 0.5 else p.first
        city = p.city if rng.random() < 0.9 else _pick(rng, _CITIES)  # people move
        level = rng.choices(_LEVELS, weights=_LEVEL_WEIGHTS)[0]
        low = {"bronze": 0, "silver": 100_000, "gold": 300_000, "platinum": 600_000}[level]
        since = f"{rng.randint(1995, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        rows.append(
            {
                "_techmarketingdemos": {
                    "systemIdentifier": {"loyaltyId": p.loyalty_id, "crmId": crm_id},
                    "loyalty": {
                        "points": rng.randint(low, low + 399_999),
                        "level": level,
                        "memberSince": since,
                    },
                },
                "person": {"name": {"firstName": first, "lastName": p.last}},
                "homeAddress": {"city": city},
            }
        )
    return rows


def _activity(rng: random.Random, people: int, events: int) -> list[int]:
    """Events per person: Zipf-Mandelbrot over a random ranking of the people."""
    cumulative = list(
        itertools.accumulate((r + ZIPF_OFFSET) ** -ZIPF_EXPONENT for r in range(1, people + 1))
    )
    by_rank = [0] * people
    total = cumulative[-1]
    rand = rng.random
    for _ in range(events):
        by_rank[bisect.bisect_right(cumulative, rand() * total)] += 1
    order = list(range(people))
    rng.shuffle(order)
    budgets = [0] * people
    for rank, person in enumerate(order):
        budgets[person] = by_rank[rank]
    return budgets


def _share_tablets(
    rng: random.Random, persons: list[_Person], web_budget: list[int]
) -> list[tuple[str, tuple[int, int]]]:
    """A few family tablets, each used (and logged into) by two people."""
    wanted = min(max(2, len(persons) // 10_000), 50)
    active = [p.index for p in persons if web_budget[p.index] >= 3]
    rng.shuffle(active)
    shared: list[tuple[str, tuple[int, int]]] = []
    pairs = min(wanted, len(active) // 2)
    for a, b in zip(active[0 : 2 * pairs : 2], active[1 : 2 * pairs : 2], strict=True):
        tablet = _ecid(rng)
        for i in (a, b):
            persons[i].ecids.append(tablet)
            persons[i].device_kinds.append("tablet")
        shared.append((tablet, (a, b)))
    return shared


# --- events ---------------------------------------------------------------------------------


def _web_sessions(
    rng: random.Random,
    person: _Person,
    budget: int,
    *,
    forced_device: str | None,
    start_ms: int,
    out: list[tuple[int, Json]],
) -> None:
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
    rng: random.Random, person: _Person, ecid: str, force_login: bool, limit: int
) -> list[Json]:
    """One visit: pages, product views, sometimes a cart, checkout and purchase.

    The visit is planned first and only its first `limit` steps are built: the person's budget
    may end in the middle of it.
    """
    rand = rng.random
    logged_in = ecid in person.logged_in
    products, _ = _GROUPS[person.group]
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
                "purchaseID": _purchase_id(rng),
                "priceTotal": _total(items),
                "currencyCode": "USD",
            }
        events.append(event)
    return events


def _login(rng: random.Random, ecid: str, email: str, kind: str) -> Json:
    return {
        "_id": _uuid(rng),
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
        "_id": _uuid(rng),
        "timestamp": "",
        "eventType": event_type,
        "identityMap": {"ECID": [{"id": ecid, "primary": True}]},
        "device": {"type": kind},
    }
    if items is None:
        page = _PAGES[int(rng.random() * len(_PAGES))]
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


def _voice_sessions(
    rng: random.Random,
    person: _Person,
    budget: int,
    start_ms: int,
    out: list[tuple[int, Json]],
) -> None:
    assert person.voice_id is not None  # only speaker owners get a voice budget
    voice_id = person.voice_id
    _, queries = _GROUPS[person.group]
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
                query = _pick(rng, queries) if rng.random() < 0.8 else _pick(rng, _GROUPS)[1][0]
                body = {"intent": "search_products", "query": query}
            else:
                body = {"intent": _pick(rng, _OTHER_INTENTS)}
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
        "_id": _uuid(rng),
        "timestamp": "",
        "eventType": "voice.intent",
        "identityMap": identity_map,
        "device": {"type": "smart_speaker"},
        "voice": voice,
    }


def _store_purchase(rng: random.Random, person: _Person, start_ms: int) -> tuple[int, Json]:
    products, _ = _GROUPS[person.group]
    cart: list[tuple[int, int]] = []
    for _ in range(1 + int(rng.random() * 3)):
        product = _pick(rng, products) if rng.random() < 0.6 else _pick(rng, _CATALOG)
        cart.append((product, 1 + int(rng.random() * 3)))
    # Opening hours, 09:00-21:00 UTC, on one of the days.
    ts = start_ms + int(rng.random() * SPAN_DAYS) * DAY_MS + 9 * 3_600_000
    ts += int(rng.random() * 12 * 3_600_000)
    body = {
        "_techmarketingdemos": {"systemIdentifier": {"loyaltyId": person.loyalty_id}},
        "commerce": {"order": {"purchaseID": _purchase_id(rng), "priceTotal": _total(cart)}},
        "productListItems": [{"SKU": PRODUCTS[i][0], "quantity": qty} for i, qty in cart],
        "timestamp": _iso(ts),
        "_id": _uuid(rng),
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


def _in_time_order(rows: list[tuple[int, Json]]) -> list[Json]:
    rows.sort(key=_first)  # stable: equal times keep their generation order
    return [event for _, event in rows]


def _first(row: tuple[int, Json]) -> int:
    return row[0]


# --- junk and small helpers -----------------------------------------------------------------


def _junk_lines(stream: GeneratedStream) -> list[bytes]:
    """One of each kind of bad line a real feed has; each must end as a dead letter."""
    ecid = "0" * 10 + "1" * 28
    when = stream.web[0]["timestamp"] if stream.web else "2026-11-01T00:00:00.000Z"
    base: Json = {"eventType": "web.webpagedetails.pageViews"}
    return [
        b'{"_id": "junk-1", "eventType": "web.webpagedetails.pageViews", "timestamp": ',
        orjson.dumps({"_id": "junk-2", **base, "identityMap": {"ECID": [{"id": ecid}]}}),
        orjson.dumps(
            {"_id": "junk-3", "timestamp": when, **base, "identityMap": {"ECID": [{"id": "null"}]}}
        ),
        orjson.dumps([{"_id": "junk-4", "timestamp": when, **base}]),
        orjson.dumps(
            {
                "_id": "junk-5",
                "timestamp": "last tuesday",
                **base,
                "identityMap": {"ECID": [{"id": ecid}]},
            }
        ),
    ]


def _write_lines(path: Path, records: list[Json], junk_at: dict[int, list[bytes]]) -> None:
    """One JSON object a line, streamed: building the whole file in memory first was several
    times slower at 500,000 records (measured: 6.8 s against 1.0 s)."""
    dumps = orjson.dumps
    with path.open("wb") as out:
        write = out.write
        for index, record in enumerate(records):
            for line in junk_at.get(index, ()):
                write(line + b"\n")
            write(dumps(record) + b"\n")
        for index in sorted(junk_at):
            if index >= len(records):  # fewer records than junk lines
                for line in junk_at[index]:
                    write(line + b"\n")


def _epoch_ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"start {text!r} needs a time zone, e.g. a trailing Z")
    return int(moment.timestamp() * 1000)


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


def _uuid(rng: random.Random) -> str:
    """A version-4-shaped id from the seeded generator (uuid.uuid4 would read the OS)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _pick(rng: random.Random, items: tuple[_T, ...]) -> _T:
    """`rng.choice` without its overhead (the same for every Python, and fast)."""
    return items[int(rng.random() * len(items))]


def _ecid(rng: random.Random) -> str:
    """An Experience Cloud ID: 38 digits."""
    return f"{rng.getrandbits(126):038d}"


def _purchase_id(rng: random.Random) -> str:
    """Like the store export's `805-472-642-1090`."""
    digits = f"{rng.getrandbits(44):013d}"[-13:]
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:9]}-{digits[9:]}"


def _total(cart: list[tuple[int, int]]) -> float:
    return round(sum(PRODUCTS[i][3] * qty for i, qty in cart), 2)
