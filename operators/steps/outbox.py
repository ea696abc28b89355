"""The outbox: every output of a Bytewax key, numbered, written in the same WriteBatch as the
state that made it, and kept until a durable Bytewax snapshot covers it. A resumed worker emits
what follows its last durable snapshot again (at-least-once; consumers dedup by `id`).

Keys:
| key | value | what |
| --- | --- | --- |
| `q/KKKK/NNNNNNNNNNNNNNNN` | output | output N of Bytewax key KKKK |
| `q/KKKK/seq` | int | the last output sequence of key KKKK |
"""

from __future__ import annotations

from collections.abc import Sequence

from operators.steps.call import Output
from operators.store import Store, Txn, decode, encode
from schemas.records import AudienceChange, Identity, JourneySend, output_from_stored

PREFIX = b"q/"


def outbox_key(key: int, seq: int) -> bytes:
    return f"q/{key:04d}/{seq:016d}".encode()


def outbox_prefix(key: int) -> bytes:
    return f"q/{key:04d}/0".encode()  # sequences, not the `seq` counter


def seq_key(key: int) -> bytes:
    return f"q/{key:04d}/seq".encode()


class Outbox:
    """`keep`: outputs are kept for re-sending (Bytewax recovery on); without recovery nothing
    would ever prune them, nor send them again."""

    def __init__(self, store: Store, *, keep: bool = True) -> None:
        self.store = store
        self.keep = keep
        self._seqs: dict[int, int] = {}

    def seq(self, key: int) -> int:
        """The sequence number of the last output of this key (0: none yet)."""
        if key not in self._seqs:
            raw = self.store.get(seq_key(key))
            self._seqs[key] = 0 if raw is None else int(raw)
        return self._seqs[key]

    def next_seq(self, key: int, out: Sequence[Output]) -> int:
        """The sequence the next output of this call will get (see `append`)."""
        return self.seq(key) + len(out) + 1

    def append(self, txn: Txn, key: int, out: Sequence[Output]) -> None:
        if not out:
            return
        seq = self.seq(key)
        for item in out:
            seq += 1
            if self.keep:
                txn.put(outbox_key(key, seq), encode(item.to_stored()))
        txn.put(seq_key(key), str(seq).encode())
        self._seqs[key] = seq

    def after(self, key: int, seq: int) -> list[Output]:
        """Outputs after `seq`: what a resumed worker re-emits."""
        start = outbox_key(key, seq + 1)
        return [
            output_from_stored(decode(raw))
            for k, raw in self.store.scan(outbox_prefix(key))
            if k >= start
        ]

    def prune(self, key: int, upto_seq: int) -> None:
        """Forget outputs at or before a snapshot Bytewax has made durable."""
        if upto_seq > 0:
            self.store.delete_range(outbox_prefix(key), outbox_key(key, upto_seq + 1))

    def drop_person(self, txn: Txn, members: Sequence[Identity]) -> None:
        """Outputs still waiting that name any of `members` go (a GDPR delete): audience
        changes, journey sends and profile documents (the delete's own document follows
        them)."""
        names = {f"{ns}:{v}" for ns, v in members}
        for key, raw in self.store.scan(PREFIX):
            if key.endswith(b"/seq"):
                continue
            stored_output = decode(raw)
            if isinstance(stored_output, dict):
                if stored_output["cmd"] == "send":  # a journey's message
                    held = JourneySend.from_stored(stored_output).identities
                elif stored_output["cmd"] == "profile":
                    held = stored_output["doc"].get("identities") or {}
                else:
                    continue  # a command between the steps, not an output to a destination
            else:
                held = AudienceChange.from_stored(stored_output).identities
            if any(f"{ns}:{v}" in names for ns, values in held.items() for v in values):
                txn.delete(key)
