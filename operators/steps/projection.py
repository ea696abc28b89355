"""The profile projection (DESIGN §11): at the end of each call, the whole current document of
every profile the call wrote, and a forward for every profile it merged away. A forgotten
person's deletion names its profile and every profile id its identities could have had (a
merged-away profile's forward names identities: it must go too). They are outputs like
audience changes: numbered in the outbox in the same WriteBatch as the state that made them,
and sent again after a crash.

`as_of.seq` grows per profile: it is the process's projection counter, never below the wall
clock in microseconds, saved with each call that emits. So a profile's documents are numbered
upwards across merges, deletes, restarts, and a state rebuilt from scratch (a reader keeps the
document with the highest seq; one sent again after a crash is the same document).

Keys:
| key | value | what |
| --- | --- | --- |
| `meta/projection-seq` | int | the last `as_of.seq` given out by this process |
"""

from __future__ import annotations

from typing import Any

from operators import metrics
from operators.identity import profile_id
from operators.queries import profile_document
from operators.segments import SegmentIndex, trait_values
from operators.steps.call import Call
from operators.steps.positions import Positions
from operators.steps.profiles import Gone, Profiles
from operators.store import Store
from schemas.records import Identity, ProfileDocument, iso_ms

SEQ_KEY = b"meta/projection-seq"


class Projection:
    """Only built when a destination of kind `profiles` is configured: it turns the tracking
    of written profiles on (`Profiles.touched`)."""

    def __init__(
        self, store: Store, index: SegmentIndex, profiles: Profiles, positions: Positions
    ) -> None:
        self.index = index
        self.profiles = profiles
        self.positions = positions
        raw = store.get(SEQ_KEY)
        self.seq = 0 if raw is None else int(raw)
        profiles.touched = {}

    def emit(self, call: Call) -> None:
        """The documents of the profiles this call touched, into `call.out`."""
        touched = self.profiles.take_touched()
        if not touched:
            return
        txn, now = call.txn, self.positions.now_ms
        self.seq = max(self.seq, call.wall_ms * 1000)
        as_of_time = iso_ms(now)
        updated_at = iso_ms(call.wall_ms)
        made = 0
        for canonical, gone in touched.items():
            docs = self._documents(call, canonical, gone, now)
            for doc in docs:
                self.seq += 1
                doc["updated_at"] = updated_at
                doc["as_of"] = {"event_time": as_of_time, "seq": self.seq}
                call.out.append(ProfileDocument(doc["profile_id"], doc, call.read_ns))
            if gone is None:
                made += len(docs)
            else:
                kind = "merged" if gone.merged_into else "deleted"
                metrics.PROFILE_DOCUMENTS.labels(kind).inc(len(docs))
        metrics.PROFILE_DOCUMENTS.labels("live").inc(made)
        txn.put(SEQ_KEY, str(self.seq).encode())

    def _documents(
        self, call: Call, canonical: Identity, gone: Gone | None, now_ms: int
    ) -> list[dict[str, Any]]:
        pid = profile_id(canonical)
        if gone is None:
            txn = call.txn
            profile = self.profiles.get(txn, canonical)
            if profile is None:  # written, then deleted without a reason (not in this engine)
                return []
            cluster = self.profiles.cluster_of(txn, canonical, profile)
            traits = trait_values(profile, self.index, now_ms)
            return [profile_document(canonical, cluster, profile, traits)]
        if gone.merged_into is not None:
            forward = profile_id(gone.merged_into)
            return [{"profile_id": pid, "merged_into": forward, "identities": gone.identities}]
        # Forgotten: the profile, and every profile id the person's identities ever had (each
        # was the canonical of a profile that merged in, and its forward names identities):
        # on a compacted topic, nothing of the person outlives the delete.
        ids = {pid} | {profile_id((ns, v)) for ns, vs in gone.identities.items() for v in vs}
        return [{"profile_id": p, "deleted": True} for p in [pid, *sorted(ids - {pid})]]
