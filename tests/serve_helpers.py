"""For the `cdp serve` tests: a config in a temp dir, projection documents written as the
projection contract says (issue #15), and a server on loopback with a real HTTP client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson

from config.settings import Settings, load_settings
from flows.serve.server import Running

KEYS = {"CDP_TEST_READ": "k-read", "CDP_TEST_ALL": "k-all", "CDP_TEST_DECIDE": "k-decide"}
READ = {"Authorization": "Bearer k-read"}
ALL = {"Authorization": "Bearer k-all"}
DECIDE = {"Authorization": "Bearer k-decide"}

CONFIG = """
namespaces:
  - {name: CRMID, unique: true}
  - {name: Email, unique: true, normalize: email}
  - {name: Phone, normalize: phone}
  - {name: ECID}
sources:
  - name: web
    kind: event
    topic: PREFIXweb
  - name: crm
    kind: profile
    topic: PREFIXcrm
    identities: {personalEmail.address: Email}
  - name: offline
    kind: event
    path: offline.json
TRAITSsegments:
  - {id: asked-for-shirts, rule: 'profile.interest == "shirts"'}
  - {id: gold, rule: 'profile.loyalty.level == "gold"'}
kafka: {bootstrap_servers: "BOOTSTRAP"}
serve:
  profiles: PROFILES
  keys:
    - {name: website, key_env: CDP_TEST_READ, scopes: [read]}
    - {name: voice-skill, key_env: CDP_TEST_ALL, scopes: [read, decide, collect]}
    - {name: decider, key_env: CDP_TEST_DECIDE, scopes: [decide]}
offers:
  - placement: home-hero
    offers:
      - {id: welcome, priority: 0, content: {title: "Welcome to Luma"}}
      - {id: fitness-shirts, rule: 'in_segment("asked-for-shirts")', priority: 10, content: {title: "20% off fitness shirts"}}
      - {id: big-spender, rule: 'profile.traits.lifetime_value >= 500', priority: 20, content: {title: "VIP"}}
      - {id: gold-only, rule: 'in_segment("gold")', priority: 5, content: {title: "Gold"}}
  - placement: members-only
    offers:
      - {id: gold-lounge, rule: 'in_segment("gold")', content: {title: "Lounge"}}
"""


# `traits:` comes with the projection side of issue #15; before it, `profile.traits.NAME` reads
# the document's traits as a path.
TRAITS = (
    "traits:\n  - {name: lifetime_value, value: "
    "'sum(event.commerce.order.priceTotal, event.eventType == \"commerce.purchases\")'}\n"
    if "traits" in Settings.model_fields
    else ""
)


def write_config(
    tmp: Path,
    *,
    profiles: str = "{path: profiles.jsonl}",
    bootstrap: str = "127.0.0.1:1",
    prefix: str = "",
    extra: str = "",
) -> Path:
    text = CONFIG.replace("PROFILES", profiles).replace("BOOTSTRAP", bootstrap)
    text = text.replace("PREFIX", prefix).replace("TRAITS", TRAITS) + extra
    path = tmp / "cdp.yaml"
    path.write_text(text)
    return path


def settings_of(path: Path) -> Settings:
    return load_settings(path, env={})


def document(
    profile_id: str,
    seq: int,
    identities: dict[str, list[str]],
    *,
    attributes: dict[str, Any] | None = None,
    segments: dict[str, str] | None = None,
    traits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A live profile document of the projection contract."""
    return {
        "profile_id": profile_id,
        "identities": identities,
        "attributes": attributes or {},
        "segments": {
            s: {"status": status, "since": "2026-12-01T10:00:00Z"}
            for s, status in (segments or {}).items()
        },
        "events": {"count": 1, "first": "2026-12-01T10:00:00Z", "last": "2026-12-01T10:00:00Z"},
        "traits": traits or {"lifetime_value": None},
        "updated_at": _now_iso(),
        "as_of": {"event_time": "2026-12-01T10:00:00Z", "seq": seq},
    }


def merged(loser: str, survivor: str, seq: int, identities: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "profile_id": loser,
        "merged_into": survivor,
        "identities": identities,
        "updated_at": _now_iso(),
        "as_of": {"event_time": "2026-12-01T10:00:00Z", "seq": seq},
    }


def deleted(profile_id: str, seq: int) -> dict[str, Any]:
    return {
        "profile_id": profile_id,
        "deleted": True,
        "updated_at": _now_iso(),
        "as_of": {"event_time": "2026-12-01T10:00:00Z", "seq": seq},
    }


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def append(path: Path, *documents: dict[str, Any]) -> None:
    with path.open("ab") as out:
        for doc in documents:
            out.write(orjson.dumps(doc) + b"\n")


@contextmanager
def server(settings: Settings, config: Path | None = None) -> Iterator[httpx.Client]:
    """A real server on a free loopback port, and a client pointed at it."""
    running = Running(settings, config_path=config, host="127.0.0.1", port=0, env=KEYS)
    with running, httpx.Client(base_url=running.url, timeout=30) as client:
        wait_for(lambda: client.get("/healthz").status_code == 200)
        yield client


def wait_for(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        time.sleep(0.02)
