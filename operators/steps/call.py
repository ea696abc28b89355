"""One engine call: the transaction every step reads and writes through, what the call emits,
and its clocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.store import Txn
from schemas.records import AudienceChange, Command, JourneySend, ProfileDocument

Output = AudienceChange | ProfileDocument | JourneySend | Command


@dataclass(slots=True)
class Call:
    txn: Txn
    wall_ms: int  # the wall clock of the call (`emitted_at`, tombstones)
    out: list[Output] = field(default_factory=list)
    # Read time of the record being applied, stamped on the changes it causes (latency).
    read_ns: int = 0
