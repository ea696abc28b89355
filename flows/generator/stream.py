"""The whole stream from one seed: people, their activity, their events, and the truth.

Deterministic for a given seed: one `random.Random`, no wall clock, no hash-ordered iteration.
The order of the draws is part of the output: moving a step, here or in the modules it calls,
changes the stream of every seed. No test pins the exact bytes, so compare the output's hashes
before and after a change that should not alter it.
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flows.generator.events import in_time_order, store_purchase, voice_sessions, web_sessions
from flows.generator.people import (
    activity,
    assign_profiles,
    crm_rows,
    loyalty_rows,
    make_person,
    share_tablets,
)
from flows.generator.tables import P_STORE, P_VOICE, Json


@dataclass(frozen=True)
class GeneratedStream:
    """The five sources, each a list of records as the files hold them, and the truth."""

    crm: list[Json]  # profile records, shaped like luma-crm.json
    loyalty: list[Json]  # profile records, shaped like luma-loyalty.json
    web: list[Json]  # XDM ExperienceEvents from web and app, time-ordered
    voice: list[Json]  # voice-assistant events, time-ordered
    store: list[Json]  # store purchases, like luma-offline-purchases.json, time-ordered
    # person index -> {"crm_id", "email", "phone", "loyalty_id", "ecids", "voice_id"},
    # plus "shared_devices": [ecid, ...]
    truth: dict[int | str, Any] = field(repr=False)


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
    persons = [make_person(rng, i) for i in range(people)]
    assign_profiles(rng, persons)
    budgets = activity(rng, people, events)

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

    shared = share_tablets(rng, persons, web_budget)
    first_device = {p: ecid for ecid, pair in shared for p in pair}

    web_rows: list[tuple[int, Json]] = []
    voice_rows: list[tuple[int, Json]] = []
    store_rows: list[tuple[int, Json]] = []
    for person in persons:
        i = person.index
        if web_budget[i]:
            web_sessions(
                rng,
                person,
                web_budget[i],
                forced_device=first_device.get(i),
                start_ms=start_ms,
                out=web_rows,
            )
        if voice_budget[i]:
            voice_sessions(rng, person, voice_budget[i], start_ms, voice_rows)
        for _ in range(store_budget[i]):
            store_rows.append(store_purchase(rng, person, start_ms))

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
        crm=crm_rows(rng, persons),
        loyalty=loyalty_rows(rng, persons),
        web=in_time_order(web_rows),
        voice=in_time_order(voice_rows),
        store=in_time_order(store_rows),
        truth=truth,
    )


def _epoch_ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"start {text!r} needs a time zone, e.g. a trailing Z")
    return int(moment.timestamp() * 1000)
