"""`cdp serve`'s replica of the profile projection (DESIGN §11): the documents and an index from
every identity to its profile, kept in the server's own store.

The projection contract: one document per changed profile, keyed by `profile_id`, with an
`as_of.seq` that grows per profile. A reader keeps, per profile, the document with the highest
seq (a replay re-sends documents that are the same or older); a `merged_into` record re-points
the loser's identities to the survivor; a `deleted` record (file) or a tombstone (Kafka: value
null) removes the profile and its identities.

Keys (this module owns the `sv/` prefix of the server's store; the worker's state is never
opened here):
- `sv/doc/<profile_id>`   the live document, as served (orjson bytes)
- `sv/meta/<profile_id>`  `{"seq", "state": live|merged|deleted, "into", "ids"}`
- `sv/id/<NS:value>`      the profile id an identity belongs to
- `sv/position`           where the projection was read to, written with the documents it
                          brought: `{"source", "inode", "offset"}` (file) or `{"source",
                          "partitions": {"0": next offset}}` (topic); a restart on a kept
                          store resumes there
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from operators.store import Store, Txn

DOC = b"sv/doc/"
META = b"sv/meta/"
IDENTITY = b"sv/id/"
POSITION = b"sv/position"
_MAX_FORWARDS = 8  # a chain of merges longer than this is a loop, not a person
Outcome = Literal["applied", "stale", "bad"]


@dataclass(frozen=True, slots=True)
class Found:
    profile_id: str
    document: bytes  # the JSON document as served


def clear(store: Store) -> None:
    """Forget every document and the position."""
    store.delete_range(b"sv/", b"sv0")


def resume(store: Store, source: str, keep: bool) -> dict[str, Any]:
    """Where to read the projection from: the stored position when the store is kept and was
    filled from the same source; else the beginning, on an emptied store."""
    raw = store.get(POSITION)
    held = None if raw is None else orjson.loads(raw)
    if keep and isinstance(held, dict) and held.get("source") == source:
        return held
    clear(store)
    return {"source": source}


def identities_of(document: Mapping[str, Any]) -> list[str]:
    """`{"Email": ["a@b.c"]}` -> `["Email:a@b.c"]` (malformed entries are skipped)."""
    found = document.get("identities")
    out: list[str] = []
    if not isinstance(found, Mapping):
        return out
    for namespace, values in found.items():
        if isinstance(values, list):
            out.extend(f"{namespace}:{v}" for v in values if isinstance(v, str | int))
    return out


def _seq(document: Mapping[str, Any]) -> int | None:
    as_of = document.get("as_of")
    seq = as_of.get("seq") if isinstance(as_of, Mapping) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def apply_document(txn: Txn, key: str | None, document: Any) -> Outcome:
    """One projection record: `key` is the Kafka message key (None: a file's line), `document`
    the parsed value (None: a Kafka tombstone)."""
    if document is None:
        if not key:
            return "bad"
        meta = txn.get_json(META + key.encode())
        seq = meta["seq"] if meta else -1
        _remove(txn, key, meta, seq)
        return "applied"
    if not isinstance(document, dict):
        return "bad"
    profile_id = document.get("profile_id")
    seq = _seq(document)
    if not isinstance(profile_id, str) or not profile_id or seq is None:
        return "bad"
    meta = txn.get_json(META + profile_id.encode())
    if meta is not None and seq <= meta["seq"]:
        return "stale"
    if document.get("deleted") is True:
        _remove(txn, profile_id, meta, seq)
    elif isinstance(document.get("merged_into"), str):
        _forward(txn, profile_id, meta, seq, document)
    else:
        _live(txn, profile_id, meta, seq, document)
    return "applied"


def _points_here(txn: Txn, identity: str, profile_id: str) -> bool:
    return txn.get(IDENTITY + identity.encode()) == profile_id.encode()


def _remove(txn: Txn, profile_id: str, meta: Any, seq: int) -> None:
    for identity in meta["ids"] if meta else ():
        if _points_here(txn, identity, profile_id):
            txn.delete(IDENTITY + identity.encode())
    txn.delete(DOC + profile_id.encode())
    txn.put_json(
        META + profile_id.encode(), {"seq": seq, "state": "deleted", "into": None, "ids": []}
    )


def _forward(txn: Txn, profile_id: str, meta: Any, seq: int, document: Mapping[str, Any]) -> None:
    into: str = document["merged_into"]
    moved = dict.fromkeys([*(meta["ids"] if meta else ()), *identities_of(document)])
    for identity in moved:
        held = txn.get(IDENTITY + identity.encode())
        # An identity the survivor (or a later merge) already holds is left where it is.
        if held is None or held == profile_id.encode():
            txn.put(IDENTITY + identity.encode(), into.encode())
    txn.delete(DOC + profile_id.encode())
    txn.put_json(
        META + profile_id.encode(), {"seq": seq, "state": "merged", "into": into, "ids": []}
    )


def _live(txn: Txn, profile_id: str, meta: Any, seq: int, document: Mapping[str, Any]) -> None:
    ids = identities_of(document)
    kept = set(ids)
    for identity in meta["ids"] if meta else ():
        if identity not in kept and _points_here(txn, identity, profile_id):
            txn.delete(IDENTITY + identity.encode())
    for identity in ids:
        txn.put(IDENTITY + identity.encode(), profile_id.encode())
    txn.put(DOC + profile_id.encode(), orjson.dumps(document))
    txn.put_json(
        META + profile_id.encode(), {"seq": seq, "state": "live", "into": None, "ids": ids}
    )


def apply_batch(
    store: Store,
    records: Iterable[tuple[str | None, Any]],
    position: Mapping[str, Any] | None = None,
) -> dict[Outcome, int]:
    """Apply records in order and the position they were read to, in one atomic write; how
    many were applied, stale or bad."""
    txn = Txn(store)
    counts: dict[Outcome, int] = {"applied": 0, "stale": 0, "bad": 0}
    for key, document in records:
        counts[apply_document(txn, key, document)] += 1
    if position is not None:
        txn.put(POSITION, orjson.dumps(position))
    txn.commit()
    return counts


def profile(store: Store, profile_id: str) -> Found | None:
    """The live document of a profile, following merges to the survivor."""
    for _ in range(_MAX_FORWARDS):
        raw = store.get(DOC + profile_id.encode())
        if raw is not None:
            return Found(profile_id, raw)
        meta_raw = store.get(META + profile_id.encode())
        if meta_raw is None:
            return None
        meta = orjson.loads(meta_raw)
        if meta["state"] != "merged":
            return None
        profile_id = meta["into"]
    return None


def lookup(store: Store, namespace: str, value: str) -> Found | None:
    """The profile an identity (already normalised) belongs to."""
    held = store.get(IDENTITY + f"{namespace}:{value}".encode())
    return None if held is None else profile(store, held.decode())
