"""Read-side questions over a store: a profile, every profile, segment sizes, a cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from operators.engine import profile_document
from operators.identity import Cluster
from operators.store import Keys, Store, decode, identity_from_key
from schemas.records import Identity, parse_identity


def canonical_of(store: Store, keys: Keys, identity: Identity) -> Identity | None:
    raw = store.get(keys.pointer(identity))
    return None if raw is None else parse_identity(decode(raw))


def cluster_of(store: Store, keys: Keys, canonical: Identity) -> Cluster:
    raw = store.get(keys.cluster(canonical))
    return Cluster(members=(canonical,)) if raw is None else Cluster.from_json(decode(raw))


def find_profile(store: Store, keys: Keys, identity: Identity) -> dict[str, Any] | None:
    canonical = canonical_of(store, keys, identity)
    if canonical is None:
        return None
    raw = store.get(keys.profile(canonical))
    return profile_document(
        canonical, cluster_of(store, keys, canonical), None if raw is None else decode(raw)
    )


def iter_profiles(store: Store, keys: Keys) -> Iterator[dict[str, Any]]:
    for key, raw in store.scan(b"p/"):
        canonical = identity_from_key(key)
        yield profile_document(canonical, cluster_of(store, keys, canonical), decode(raw))


def segment_sizes(store: Store) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for _, raw in store.scan(b"p/"):
        for seg, held in decode(raw)["segs"].items():
            if held[0]:
                sizes[seg] += 1
    return sizes


def graph_summary(store: Store) -> dict[str, int]:
    """Profiles, clusters of more than one identity, links that joined clusters, refused links."""
    profiles = sum(1 for _ in store.scan(b"p/"))
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


def cluster_report(store: Store, keys: Keys, identity: Identity) -> dict[str, Any] | None:
    canonical = canonical_of(store, keys, identity)
    if canonical is None:
        return None
    cluster = cluster_of(store, keys, canonical)
    refused: list[dict[str, Any]] = []
    for member in cluster.members:
        refused.extend(decode(raw) for _, raw in store.scan(Keys.conflicts_of(member)))
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
