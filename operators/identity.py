"""Identity rules and the union-find over the identity graph, as pure functions.

A cluster is one person. Its canonical identity is its smallest member under the fixed total
order (namespace priority, then namespace name, then value), so merges only ever move one way
and converge in any order: when two clusters join, the one with the smaller canonical survives.
`resolve` reads the graph through a `GraphReader` and returns every change as data; the caller
writes them (in one WriteBatch, with the input offsets).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from config.settings import Settings
from schemas.records import Identity, identity_str


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """What the settings say about identities, precomputed for the per-record path."""

    ranks: Mapping[str, int]
    normalizers: Mapping[str, str]
    unique: frozenset[str]
    blocked_exact: frozenset[str]
    blocked_patterns: tuple[re.Pattern[str], ...]
    max_members: int
    max_value_length: int
    person: frozenset[str] = frozenset()  # person namespaces; every other one is a device
    max_devices: int | None = None  # the blob-user guard; None: off
    device_window_ms: int = 3_600_000
    # normalize's answers: a device's id comes back with every event of its session, and the
    # blocked-value regexes cost more than a dict lookup. Bounded: cleared when full.
    _seen: dict[tuple[str, str], str | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityRules:
        ident = settings.identity
        blocked = ident.blocked_values
        # Blocked values match whatever the case: "N/A" is the placeholder "n/a".
        patterns = _blocked_patterns([b for b in blocked if b.startswith("^") or b.endswith("$")])
        exact = frozenset(
            b.strip().lower() for b in blocked if not (b.startswith("^") or b.endswith("$"))
        )
        return cls(
            ranks={ns.name: i for i, ns in enumerate(settings.namespaces)},
            normalizers={ns.name: ns.normalize for ns in settings.namespaces},
            unique=frozenset(ns.name for ns in settings.namespaces if ns.unique),
            blocked_exact=exact,
            blocked_patterns=patterns,
            max_members=ident.max_identities_per_cluster,
            max_value_length=ident.max_value_length,
            person=frozenset(ns.name for ns in settings.namespaces if ns.is_person),
            max_devices=ident.max_devices_per_identity,
            device_window_ms=ident.device_window_ms,
        )

    def sort_key(self, identity: Identity) -> tuple[int, str, str]:
        """The total order: listed namespaces by priority, then unlisted ones by name."""
        return (self.ranks.get(identity[0], len(self.ranks)), identity[0], identity[1])

    def normalize(self, namespace: str, raw: str) -> str | None:
        """The normalised value, or None when the value is no identity (empty or blocked)."""
        key = (namespace, raw)
        seen = self._seen
        if key in seen:
            return seen[key]
        if len(seen) >= 1 << 16:
            seen.clear()
        value = seen[key] = self._normalize(namespace, raw)
        return value

    def _normalize(self, namespace: str, raw: str) -> str | None:
        kind = self.normalizers.get(namespace, "none")
        stripped = raw.strip()
        if kind == "email":
            # str.split() and the regex \s both split on Unicode whitespace (Py_UNICODE_ISSPACE).
            value = "".join(raw.split()).lower()
        elif kind == "phone":
            digits = "".join(c for c in stripped if c.isdigit())
            value = f"+{digits}" if stripped.startswith("+") and digits else digits
        elif kind == "lower":
            value = stripped.lower()
        else:
            value = stripped
        blocked = self.blocked_exact
        if blocked:
            lowered = value.lower()
            if lowered in blocked:
                return None
            raw_lowered = stripped.lower()
            if raw_lowered != lowered and raw_lowered in blocked:
                return None
        for pattern in self.blocked_patterns:
            if pattern.fullmatch(value) or (stripped != value and pattern.fullmatch(stripped)):
                return None
        return value


_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


def _blocked_patterns(texts: list[str]) -> tuple[re.Pattern[str], ...]:
    """The patterns, case-insensitive, those without back-references joined into one (one
    regex call per identity on the hot path instead of one per pattern)."""
    alone = [t for t in texts if _BACKREF.search(t)]
    joinable = [t for t in texts if t not in alone]
    compiled = [re.compile(t, re.IGNORECASE) for t in alone]
    if len(joinable) > 1:
        try:
            joined = re.compile("|".join(f"(?:{t})" for t in joinable), re.IGNORECASE)
        except re.error:  # e.g. an inline global flag, legal only at a pattern's start
            compiled[:0] = [re.compile(t, re.IGNORECASE) for t in joinable]
        else:
            compiled.insert(0, joined)
    elif joinable:
        compiled.insert(0, re.compile(joinable[0], re.IGNORECASE))
    return tuple(compiled)


@lru_cache(maxsize=1 << 16)  # named by every output of a profile
def profile_id(canonical: Identity) -> str:
    """A stable, opaque profile id derived from the cluster's canonical identity."""
    return "p_" + hashlib.sha256(identity_str(canonical).encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Link:
    """Why two identities are in one cluster: the record that named them together."""

    a: Identity
    b: Identity
    position: str
    ts_ms: int | None


Attachment = tuple[Identity, int]  # a device id and the event time it joined a person


@dataclass(frozen=True, slots=True)
class Cluster:
    members: tuple[Identity, ...]  # sorted by IdentityRules.sort_key
    links: tuple[Link, ...] = ()
    # The blob-user guard's memory: device ids that joined this (person) cluster within the
    # last `device_window` of event time, oldest first; a few entries at most.
    recent: tuple[Attachment, ...] = ()

    def by_namespace(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ns, value in self.members:
            out.setdefault(ns, []).append(value)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "members": [list(m) for m in self.members],
            "links": [[list(k.a), list(k.b), k.position, k.ts_ms] for k in self.links],
        }
        if self.recent:  # absent in clusters written before the guard: read as none
            out["recent"] = [[d[0], d[1], ts] for d, ts in self.recent]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cluster:
        return cls(
            members=tuple((m[0], m[1]) for m in data["members"]),
            links=tuple(
                Link((k[0][0], k[0][1]), (k[1][0], k[1][1]), k[2], k[3]) for k in data["links"]
            ),
            recent=tuple(((r[0], r[1]), r[2]) for r in data.get("recent", ())),
        )


@dataclass(frozen=True, slots=True)
class Conflict:
    """A refused link: both identities, the record that proposed it, the rule that refused it."""

    a: Identity
    b: Identity
    rule: str
    position: str
    ts_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "a": list(self.a),
            "b": list(self.b),
            "rule": self.rule,
            "position": self.position,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class Merge:
    survivor: Identity
    loser: Identity
    merge_id: str


@dataclass(slots=True)
class Resolution:
    """Everything `resolve` decided for one record."""

    canonical: Identity
    cluster: Cluster | None  # None: unchanged and not loaded (read it when needed)
    pointers: dict[Identity, Identity] = field(default_factory=dict)  # identity -> canonical
    clusters: dict[Identity, Cluster | None] = field(default_factory=dict)  # None: deleted
    merges: list[Merge] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


class GraphReader(Protocol):
    def canonical(self, identity: Identity) -> Identity | None: ...
    def cluster(self, canonical: Identity) -> Cluster | None: ...


def refusal(rules: IdentityRules, left: Cluster, right: Cluster) -> str | None:
    """The rule a union of the two clusters would break, or None."""
    for namespace in sorted(rules.unique):
        values = {v for ns, v in left.members if ns == namespace}
        values.update(v for ns, v in right.members if ns == namespace)
        if len(values) > 1:
            return f"unique:{namespace}"
    if len(left.members) + len(right.members) > rules.max_members:
        return "max_identities_per_cluster"
    return None


BLOB_RULE = "max_devices_per_identity"


def device_attachments(
    rules: IdentityRules, left: Cluster, right: Cluster, ts_ms: int | None
) -> tuple[Attachment, ...] | None:
    """The blob-user guard: the union's recent device attachments, or None when the union
    would hold more than `max_devices` device ids attached within one `device_window`.

    A side with a person identity gains the other side's devices at `ts_ms` when that side has
    none; two person sides (a CRM row joining an email and a loyalty id) pool what each
    gathered, at the times they gathered it. Clusters with no person identity keep nothing.
    Records with no event time (profile rows) are not counted: they cannot be placed in a
    window. Pure: only the clusters and the record's time. What is kept reaches one window
    back from the newest time seen, so a record later than that is judged on what is kept.
    """
    left_person = _has_person(rules, left)
    right_person = _has_person(rules, right)
    if not (left_person or right_person):
        return ()
    pooled = (*left.recent, *right.recent)
    if ts_ms is None or rules.max_devices is None:
        return pooled
    if left_person and not right_person:
        pooled += tuple((m, ts_ms) for m in right.members if m[0] not in rules.person)
    elif right_person and not left_person:
        pooled += tuple((m, ts_ms) for m in left.members if m[0] not in rules.person)
    window = rules.device_window_ms
    if _densest(sorted(at for _, at in pooled), window) > rules.max_devices:
        return None
    newest = max(ts_ms, *(at for _, at in pooled)) if pooled else ts_ms
    kept = sorted((a for a in pooled if a[1] > newest - window), key=lambda a: (a[1], a[0]))
    return tuple(kept)


def _densest(times: list[int], window: int) -> int:
    """The most of the (sorted) times that fall in one window `(t - window, t]`."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _has_person(rules: IdentityRules, cluster: Cluster) -> bool:
    person = rules.person
    return any(ns in person for ns, _ in cluster.members)


def resolve(
    graph: GraphReader,
    rules: IdentityRules,
    identities: Iterable[Identity],
    position: str,
    ts_ms: int | None,
) -> Resolution:
    """Link a record's identities (best first) and say which cluster the record belongs to.

    The record belongs to the cluster of its highest-priority identity; every other identity is
    linked into it unless a rule refuses, in which case the link is recorded as a conflict and
    both clusters stay apart.
    """
    ids = list(identities)
    pointers: dict[Identity, Identity] = {}
    clusters: dict[Identity, Cluster | None] = {}
    stored: dict[Identity, Identity | None] = {}  # graph.canonical, read once per identity

    def stored_canonical(identity: Identity) -> Identity | None:
        if identity in stored:
            return stored[identity]
        found = stored[identity] = graph.canonical(identity)
        return found

    def canonical_of(identity: Identity) -> Identity | None:
        if identity in pointers:
            return pointers[identity]
        return stored_canonical(identity)

    def cluster_of(canonical: Identity) -> Cluster | None:
        if canonical in clusters:
            return clusters[canonical]
        return graph.cluster(canonical)

    primary = ids[0]
    current = canonical_of(primary)
    cluster: Cluster | None = None  # loaded only when a link needs it (the common event has none)
    if current is None:
        current = primary
        pointers[primary] = primary
        cluster = Cluster(members=(primary,))
        clusters[primary] = cluster
    resolution = Resolution(
        canonical=current, cluster=cluster, pointers=pointers, clusters=clusters
    )

    for identity in ids[1:]:
        other_canonical = canonical_of(identity)
        if other_canonical == current:
            continue
        if cluster is None:
            # A pointer without its cluster cannot happen in a consistent store; heal it.
            cluster = cluster_of(current) or Cluster(members=(current,))
        other = (cluster_of(other_canonical) if other_canonical is not None else None) or Cluster(
            members=(identity,)
        )
        if other_canonical is None:
            other_canonical = identity
        rule = refusal(rules, cluster, other)
        recent = device_attachments(rules, cluster, other, ts_ms) if rule is None else None
        if recent is None:
            refused = rule or BLOB_RULE
            resolution.conflicts.append(Conflict(primary, identity, refused, position, ts_ms))
            continue
        survivor, loser = sorted((current, other_canonical), key=rules.sort_key)
        members = tuple(sorted({*cluster.members, *other.members}, key=rules.sort_key))
        link = Link(primary, identity, position, ts_ms)
        cluster = Cluster(members, (*cluster.links, *other.links, link), recent)
        for member in members:
            pointers[member] = survivor
        clusters[loser] = None
        clusters[survivor] = cluster
        resolution.merges.append(Merge(survivor, loser, merge_id(survivor, loser, position)))
        current = survivor

    resolution.canonical = current
    resolution.cluster = cluster
    # Only members whose pointer really changed need writing.
    if pointers:
        resolution.pointers = {m: c for m, c in pointers.items() if stored_canonical(m) != c}
    return resolution


def merge_id(survivor: Identity, loser: Identity, position: str) -> str:
    text = f"{identity_str(survivor)}|{identity_str(loser)}|{position}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]
