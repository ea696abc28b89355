"""The data of `python -m benchmarks.serve`: its config, and profile documents of the
projection contract (issue #15) for N people, with the identities, attributes, segments, event
summaries and traits a retailer's profiles have, written as the `profiles` destination writes a
file (one JSON line each)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

KEY_ENV = "CDP_BENCH_KEY"

SHIRTS = 'exists(event.eventType == "voice.intent" and event.voice.query contains "fitness shirts")'
SPENT = 'sum(event.commerce.order.priceTotal, event.eventType == "commerce.purchases")'


def config(prefix: str, bootstrap: str) -> dict[str, Any]:
    """One config for the server and the worker: the worker writes the projection file the
    server follows."""
    return {
        "namespaces": [
            {"name": "CRMID", "unique": True},
            {"name": "Email", "unique": True, "normalize": "email"},
            {"name": "Phone", "normalize": "phone"},
            {"name": "ECID"},
        ],
        "sources": [
            {"name": "web", "kind": "event", "topic": f"{prefix}web"},
            {
                "name": "crm",
                "kind": "profile",
                "topic": f"{prefix}crm",
                "identities": {"personalEmail.address": "Email"},
            },
        ],
        "segments": [
            {"id": "asked-for-shirts", "rule": SHIRTS},
            {"id": "gold", "rule": 'profile.loyalty.level == "gold"'},
            {"id": "yoga-fans", "rule": 'count(event.web.webPageDetails.name == "yoga") >= 2'},
            {"id": "big-spenders", "rule": "profile.traits.lifetime_value >= 500"},
        ],
        "traits": [{"name": "lifetime_value", "value": SPENT}],
        "destinations": [{"name": "projection", "kind": "profiles", "path": "profiles.jsonl"}],
        "dead_letters": {"kind": "kafka", "topic": f"{prefix}dead"},
        "kafka": {"bootstrap_servers": bootstrap},
        "state": {"dir": "state"},
        "serve": {
            "profiles": {"path": "profiles.jsonl"},
            "keys": [
                {"name": "bench", "key_env": KEY_ENV, "scopes": ["read", "decide", "collect"]}
            ],
        },
        "offers": [
            {
                "placement": "home-hero",
                "offers": [
                    _offer("vip", 'in_segment("gold") and in_segment("big-spenders")', 30),
                    _offer("fitness-shirts", 'in_segment("asked-for-shirts")', 20),
                    _offer(
                        "yoga-mats",
                        'in_segment("yoga-fans") and profile.traits.lifetime_value >= 50',
                        10,
                    ),
                    {"id": "welcome", "priority": 0, "content": {"title": "Welcome to Luma"}},
                ],
            }
        ],
    }


def _offer(offer_id: str, rule: str, priority: int) -> dict[str, Any]:
    return {"id": offer_id, "rule": rule, "priority": priority, "content": {"title": offer_id}}


FIRST = ["Ava", "Ben", "Chloe", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jack", "Kim"]
LAST = ["Smith", "Jones", "Wright", "Brown", "Garcia", "Miller", "Davis", "Lopez", "Wilson"]
DOMAINS = ["example.com", "mail.example.org", "shop.example.net"]
CITIES = [("Seattle", "US"), ("Austin", "US"), ("Toronto", "CA"), ("Leeds", "GB"), ("Lyon", "FR")]
LEVELS = ["bronze", "silver", "gold", "platinum"]
SEGMENTS = {"asked-for-shirts": 0.05, "gold": 0.2, "yoga-fans": 0.15, "big-spenders": 0.1}


def write_config(folder: Path, prefix: str, bootstrap: str) -> Path:
    path = folder / "cdp.yaml"
    path.write_text(yaml.safe_dump(config(prefix, bootstrap), sort_keys=False))
    return path


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def document(n: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{first.lower()}.{last.lower()}{n}@{rng.choice(DOMAINS)}"
    identities: dict[str, list[str]] = {
        "Email": [email],
        "ECID": [f"{rng.getrandbits(126):038d}"[:38] for _ in range(rng.randint(1, 3))],
    }
    if rng.random() < 0.6:
        identities["CRMID"] = [f"CRM{n:08d}"]
    if rng.random() < 0.4:
        identities["Phone"] = [f"+1555{n:07d}"]
    city, country = rng.choice(CITIES)
    first_seen = now - timedelta(days=rng.randint(1, 700))
    last_seen = first_seen + (now - first_seen) * rng.random()
    spent = round(rng.expovariate(1 / 180), 2) if rng.random() < 0.7 else None
    segments = {
        sid: {
            "status": "entered" if rng.random() < 0.85 else "exited",
            "since": _iso(last_seen - timedelta(hours=rng.randint(0, 500))),
        }
        for sid, share in SEGMENTS.items()
        if rng.random() < share
    }
    return {
        "profile_id": f"p_{rng.getrandbits(64):016x}",
        "identities": identities,
        "attributes": {
            "person": {"name": {"firstName": first, "lastName": last}},
            "personalEmail": {"address": email},
            "homeAddress": {"city": city, "countryCode": country},
            "loyalty": {"level": rng.choice(LEVELS), "points": rng.randint(0, 20000)},
            "consents": {"marketing": {"val": rng.choice(["y", "n"])}},
        },
        "segments": segments,
        "events": {
            "count": rng.randint(1, 400),
            "first": _iso(first_seen),
            "last": _iso(last_seen),
        },
        "traits": {"lifetime_value": spent},
        "updated_at": _iso(now),
        "as_of": {"event_time": _iso(last_seen), "seq": rng.randint(1, 1 << 40)},
    }


def write_profiles(path: Path, count: int, sample_path: Path, sample: int, seed: int = 15) -> int:
    """`count` documents into `path`; `sample` of their identities, one `NAMESPACE:VALUE` a
    line, into `sample_path` (the known identities the load generator asks for). Bytes written."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    every = max(1, count // sample)
    size = 0
    with path.open("wb") as out, sample_path.open("w") as known:
        for n in range(count):
            doc = document(n, rng, now)
            line = orjson.dumps(doc) + b"\n"
            size += len(line)
            out.write(line)
            if n % every == 0:
                ns = rng.choice(
                    [ns for ns in ("Email", "ECID", "CRMID", "Phone") if ns in doc["identities"]]
                )
                known.write(f"{ns}:{doc['identities'][ns][0]}\n")
    return size
