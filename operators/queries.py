"""Read-side questions over a store: a profile, every profile, segment sizes, a cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from operators import profile as prof
from operators.identity import Cluster, profile_id
from operators.segments import SegmentIndex, trait_values
from operators.steps.graph import cluster_key, conflicts_prefix, pointer_key
from operators.steps.profiles import PREFIX as PROFILES
from operators.steps.profiles import profile_key
from operators.store import Store, decode, identity_from_key
from schemas.records import Identity, iso_ms, parse_identity


def canonical_of(store: Store, shards: int, identity: Identity) -> Identity | None:
    raw = store.get(pointer_key(identity, shards))
    return None if raw is None else parse_identity(decode(raw))


def cluster_of(store: Store, shards: int, canonical: Identity) -> Cluster:
    raw = store.get(cluster_key(canonical, shards))
    return Cluster(members=(canonical,)) if raw is None else Cluster.from_json(decode(raw))


def find_profile(
    store: Store, shards: int, identity: Identity, traits: Traits | None = None
) -> dict[str, Any] | None:
    """`traits`: the index and the event time their values are read at (the state's, for a
    windowed trait), when the config has traits."""
    canonical = canonical_of(store, shards, identity)
    if canonical is None:
        return None
    raw = store.get(profile_key(canonical, shards))
    profile = None if raw is None else decode(raw)
    return profile_document(
        canonical, cluster_of(store, shards, canonical), profile, _traits(profile, traits)
    )


def iter_profiles(
    store: Store, shards: int, traits: Traits | None = None
) -> Iterator[dict[str, Any]]:
    for key, raw in store.scan(PROFILES):
        canonical = identity_from_key(key)
        profile = decode(raw)
        yield profile_document(
            canonical, cluster_of(store, shards, canonical), profile, _traits(profile, traits)
        )


Traits = tuple[SegmentIndex, int]  # the index holding the traits, and `now` to read them at


def _traits(profile: prof.Profile | None, traits: Traits | None) -> dict[str, Any] | None:
    if traits is None or not traits[0].traits:
        return None
    index, now_ms = traits
    return trait_values(profile or prof.new_profile(), index, now_ms)


def segment_sizes(store: Store) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for _, raw in store.scan(PROFILES):
        for seg, held in decode(raw)["segs"].items():
            if held[0]:
                sizes[seg] += 1
    return sizes


def graph_summary(store: Store) -> dict[str, int]:
    """Profiles, clusters of more than one identity, links that joined clusters, refused links."""
    profiles = sum(1 for _ in store.scan(PROFILES))
    multi = links = 0
    for _, raw in store.scan(b"c/"):
        cluster = decode(raw)
        if len(cluster["members"]) > 1:
            multi += 1
        links += len(cluster["links"])
    refused = set()
    for _, raw in store.scan(b"k/"):
        c = decode(raw)
        refused.add((tuple(c["a"]), tuple(c["b"]), c["position"]))
    return {
        "profiles": profiles,
        "linked_clusters": multi,
        "links": links,
        "refused_links": len(refused),
    }


def cluster_report(store: Store, shards: int, identity: Identity) -> dict[str, Any] | None:
    canonical = canonical_of(store, shards, identity)
    if canonical is None:
        return None
    cluster = cluster_of(store, shards, canonical)
    refused: list[dict[str, Any]] = []
    for member in cluster.members:
        refused.extend(decode(raw) for _, raw in store.scan(conflicts_prefix(member)))
    return {
        "canonical": f"{canonical[0]}:{canonical[1]}",
        "members": cluster.by_namespace(),
        "links": [
            {
                "a": f"{k.a[0]}:{k.a[1]}",
                "b": f"{k.b[0]}:{k.b[1]}",
                "record": k.position,
                "ts_ms": k.ts_ms,
            }
            for k in cluster.links
        ],
        "refused": [
            {
                "a": f"{c['a'][0]}:{c['a'][1]}",
                "b": f"{c['b'][0]}:{c['b'][1]}",
                "rule": c["rule"],
                "record": c["position"],
            }
            for c in refused
        ],
    }


# The same times come back in every document of a profile (its memberships' `since`, its
# first and last event): formatted once.
_iso = lru_cache(maxsize=1 << 16)(iso_ms)


def profile_document(
    canonical: Identity,
    cluster: Cluster,
    profile: dict[str, Any] | None,
    traits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The profile JSON of DESIGN §6 (with `traits` when given)."""
    p = profile or prof.new_profile()
    events = p["events"]
    doc = {
        "profile_id": profile_id(canonical),
        "identities": cluster.by_namespace(),
        "attributes": prof.nested_attributes(p),
        "segments": {
            seg: {"status": "entered" if held[0] else "exited", "since": _iso(held[1])}
            for seg, held in sorted(p["segs"].items())
        },
        "events": {
            "count": events[0] if events else 0,
            "first": _iso(events[1]) if events else None,
            "last": _iso(events[2]) if events else None,
        },
    }
    if traits is not None:
        doc["traits"] = traits
    return doc
