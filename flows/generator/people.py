"""The people of the stream: who they are, their devices, and their CRM and loyalty rows.

A person is the ground truth the identity graph should rebuild: the exports below show only
part of it, with the gaps real exports have (null emails and phones, null crmIds, emails that
differ from the login in case and whitespace, nicknames, people who moved).
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field

from flows.generator.draws import ecid, pick
from flows.generator.tables import (
    CITIES,
    DOMAINS,
    FIRST_NAMES,
    GROUPS,
    LAST_NAMES,
    LEVEL_WEIGHTS,
    LEVELS,
    NICKNAMES,
    P_CRM,
    P_CRM_EMAIL_VARIANT,
    P_CRM_NO_CONTACT,
    P_LOYALTY,
    P_LOYALTY_CRM_LOST,
    P_SPEAKER,
    ZIPF_EXPONENT,
    ZIPF_OFFSET,
    Json,
)

# Maps a random byte to a crmId character, so one `bytes.translate` makes a whole id instead of
# a draw per character; a-d come out 8/256 of the time, the rest 7/256, fine for demo ids.
_BASE36 = bytes(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(256))


@dataclass(slots=True)
class Person:
    """One person as the generator knows them: the truth the identity graph should rebuild.

    `ecids` and `device_kinds` run in parallel (a shared tablet is appended to both); the ids
    are set by `assign_profiles` and stay None for people without that profile.
    """

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


def make_person(rng: random.Random, index: int) -> Person:
    first, gender = pick(rng, FIRST_NAMES)
    last = pick(rng, LAST_NAMES)
    email = f"{first[0]}{last}{index}@{pick(rng, DOMAINS)}".lower()
    # Unique up to 8 million people: the area code carries the ten-thousands.
    phone = f"{200 + (index // 10_000) % 800}-555-{index % 10_000:04d}"
    r = rng.random()
    devices = 1 if r < 0.5 else (2 if r < 0.85 else 3)
    ecids = [ecid(rng) for _ in range(devices)]
    # A desktop browses the web shop, a mobile uses the Luma app.
    kinds = ["desktop" if rng.random() < 0.55 else "mobile"]
    kinds += ["mobile" if kinds[0] == "desktop" else "desktop", "tablet"]
    return Person(
        index=index,
        first=first,
        gender=gender,
        last=last,
        email=email,
        phone=phone,
        city=pick(rng, CITIES),
        group=int(rng.random() * len(GROUPS)),
        ecids=ecids,
        device_kinds=kinds[:devices],
    )


def assign_profiles(rng: random.Random, persons: list[Person]) -> None:
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


def crm_rows(rng: random.Random, persons: list[Person]) -> list[Json]:
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


def loyalty_rows(rng: random.Random, persons: list[Person]) -> list[Json]:
    rows: list[Json] = []
    for p in persons:
        if p.loyalty_id is None:
            continue
        crm_id = p.crm_id if rng.random() >= P_LOYALTY_CRM_LOST else None
        first = NICKNAMES.get(p.first, p.first) if rng.random() < 0.5 else p.first
        city = p.city if rng.random() < 0.9 else pick(rng, CITIES)  # people move
        level = rng.choices(LEVELS, weights=LEVEL_WEIGHTS)[0]
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


def activity(rng: random.Random, people: int, events: int) -> list[int]:
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


def share_tablets(
    rng: random.Random, persons: list[Person], web_budget: list[int]
) -> list[tuple[str, tuple[int, int]]]:
    """A few family tablets, each used (and logged into) by two people."""
    wanted = min(max(2, len(persons) // 10_000), 50)
    active = [p.index for p in persons if web_budget[p.index] >= 3]
    rng.shuffle(active)
    shared: list[tuple[str, tuple[int, int]]] = []
    pairs = min(wanted, len(active) // 2)
    for a, b in zip(active[0 : 2 * pairs : 2], active[1 : 2 * pairs : 2], strict=True):
        tablet = ecid(rng)
        for i in (a, b):
            persons[i].ecids.append(tablet)
            persons[i].device_kinds.append("tablet")
        shared.append((tablet, (a, b)))
    return shared
