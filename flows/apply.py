"""The Bytewax adapter around the engine: one stateful step per Bytewax key, which hands each
batch to the process's engine and keeps Bytewax's snapshots to the outbox's sequence."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from bytewax.operators import StatefulBatchLogic

from config.settings import Settings
from flows.options import RunOptions, routing_name
from flows.placement import shard_keys, shard_of_key
from flows.runtime import engine_for
from operators.engine import Engine, Role
from operators.steps.call import Output
from operators.steps.exchange import GRAPH_KEY
from operators.store import shard_of
from schemas.records import Adopt, Command, Drop, Kick, Move, Routed, Tick

LOG = logging.getLogger("cdp.rollout")


class _RolloutLog:
    """A process's rollout lines (DESIGN §13): progress every few seconds, and when no pass is
    open any more. Counts only; never a profile."""

    EVERY_S = 5.0
    _lock = threading.Lock()
    _last: ClassVar[dict[int, float]] = {}  # per rollout: when the last line was written
    _done: ClassVar[dict[int, bool]] = {}

    @classmethod
    def after(cls, engine: Engine) -> None:
        rollout = engine.rollout
        if not rollout.needed or not rollout.checked:
            return
        key, now = id(rollout), time.monotonic()
        with cls._lock:
            if rollout.open:
                cls._done[key] = False
                if now - cls._last.get(key, 0.0) < cls.EVERY_S:
                    return
                line = (
                    f"rollout: {rollout.checked:,} profiles checked, {rollout.brought:,} "
                    f"brought to the edited audiences, {len(rollout.open)} pass(es) going on"
                )
            elif not cls._done.get(key):
                cls._done[key] = True
                line = (
                    f"rollout: done; {rollout.checked:,} profiles checked, {rollout.brought:,} "
                    "brought to the edited audiences"
                )
            else:
                return
            cls._last[key] = now
        LOG.info(line)


class _ApplyRecords(StatefulBatchLogic[Any, Output, tuple[int, int]]):
    """Thin adapter: every call goes to the process's engine for `role` ("all": identity,
    profile and segments in one step; "graph" / "profile": the two steps of several processes).

    Bytewax snapshots only `(key, outbox sequence)`. On resume the builder gets the sequence of
    the key's last durable snapshot and the outputs after it are emitted again; a key with no
    durable snapshot emits its whole outbox again (its records were applied, so they will be
    skipped, but what they emitted may never have reached the destinations). The state itself
    and the applied offsets live in RocksDB, which Bytewax does not roll back.
    """

    # Outputs are kept for this many snapshots of the key before they are dropped: the
    # snapshot Bytewax resumes from can lag the latest ones (the slowest worker decides).
    KEEP_SNAPSHOTS = 100

    def __init__(
        self,
        settings: Settings,
        options: RunOptions,
        route: Callable[[Any], str],
        resume: tuple[int, int] | None,
        role: Role = "all",
    ) -> None:
        self._settings = settings
        self._options = options
        self._route = route
        self._role = role
        if resume is not None:
            self._key, self._resend_after = resume
        else:
            self._key = -1
            self._resend_after = 0 if options.recovery else -1
        self._snapshots: list[int] = []
        self._engine_ref: Engine | None = None
        self._tick: datetime | None = None  # live: the next wall-clock advance
        self._kick: Kick | None = None  # the rollout of edited audiences this key runs

    def _engine(self) -> Engine:
        if self._engine_ref is None:  # opened on first use, on the worker
            options = self._options
            self._engine_ref = engine_for(
                self._settings,
                options.state_dir,
                routing_name(options),
                outbox=options.recovery,
                role=self._role,
                live=options.mode == "live",
                partitions=options.partitions,
            )
        return self._engine_ref

    def _redeliver(self) -> list[Output]:
        if self._resend_after < 0 or self._key < 0:
            return []
        seq, self._resend_after = self._resend_after, -1
        again = self._engine().outbox_after(self._key, seq)
        if self._role == "graph":  # sent again: the profile steps count them again
            self._engine().counts.graph_out += len(again)
        return again

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        if self._key < 0:
            self._key = GRAPH_KEY if self._role == "graph" else shard_of_key(self._route(values[0]))
        for value in values:
            if isinstance(value, Kick):
                self._kick = value
        out = self._redeliver()
        engine, wall = self._engine(), self._options.clock()
        if self._role == "graph":
            out.extend(engine.route(_flat(values), wall))
        elif self._role == "profile":
            out.extend(engine.process_commands(self._key, _flat(values), wall))
        else:
            out.extend(engine.process(self._key, values, wall))
        if self._kick is not None:
            _RolloutLog.after(engine)
        return self._packed(out), self.RETAIN

    def _packed(self, out: list[Output]) -> list[Any]:
        """The graph step's outputs travel in lists, one per shard key and call: between
        processes Bytewax pickles each item, and one pickle of many items costs far less."""
        if self._role != "graph" or not out:
            return out
        keys = _shard_keys(self._options, self._settings)
        groups: dict[str, list[Output]] = {}
        for item in out:
            groups.setdefault(command_key(keys, item), []).append(item)  # type: ignore[arg-type]
        return list(groups.values())

    def _rolling(self) -> bool:
        return self._kick is not None and self._engine().rolling(self._kick.shard)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out = self._redeliver()
        if self._kick is not None and self._rolling():
            # One batch of the rollout, then records again (notify_at asks for the next).
            out.extend(self._engine().roll(self._key, self._kick.shard, self._options.clock()))
            _RolloutLog.after(self._engine())
        if self._options.mode == "live" and self._key >= 0 and self._role != "graph":
            self._tick = None
            wall = self._options.clock()
            out.extend(self._engine().advance(self._key, wall, wall))
        return self._packed(out), self.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out = self._redeliver()
        # End of a replay: event time reaches the last event. A live run that stops keeps
        # its event time (the wall clock moves it on when it starts again).
        if self._key >= 0 and self._options.mode != "live":
            if self._role == "graph":
                out.extend(self._engine().finish_route(self._options.clock()))
            elif self._role == "all":
                shard = self._kick.shard if self._kick is not None else None
                out.extend(self._engine().finish(self._key, self._options.clock(), shard))
                _RolloutLog.after(self._engine())
        return self._packed(out), self.RETAIN

    def notify_at(self) -> datetime | None:
        """Live: the next wall-clock advance, at the earliest timer's due time and at least
        every `idle_advance_s`. Bytewax asks again after every batch, so the answer stays
        fixed until it has come: a time pushed back on each batch never comes while records
        flow, and timers would wait for a pause in the traffic."""
        now = datetime.now(tz=UTC)
        if self._resend_after >= 0 and self._key >= 0:
            return now  # re-emit the outbox right after a resume
        if self._rolling():
            return now  # the next batch of the rollout
        if self._options.mode != "live" or self._role == "graph":
            return None
        if self._tick is None or self._tick <= now:
            self._tick = now + timedelta(seconds=self._options.idle_advance_s)
        if self._key >= 0:
            due = self._engine().next_timer_ms()
            if due is not None:
                at = datetime.fromtimestamp(
                    (due + self._settings.time.allowed_lateness_ms) / 1000, tz=UTC
                )
                return max(now, min(at, self._tick))
        return self._tick

    def snapshot(self) -> tuple[int, int]:
        engine = self._engine()
        seq = engine.outbox_seq(self._key) if self._key >= 0 else 0
        self._snapshots.append(seq)
        if len(self._snapshots) > self.KEEP_SNAPSHOTS:
            engine.prune_outbox(self._key, self._snapshots.pop(0))
        return (self._key, seq)


def _flat(values: list[Any]) -> list[Any]:
    """Items that came packed in lists (see `_ApplyRecords._packed`), unpacked in order."""
    return [x for v in values for x in (v if isinstance(v, list) else (v,))]


def _shard_keys(options: RunOptions, settings: Settings) -> tuple[str, ...]:
    return shard_keys(settings.shards, options.processes * options.workers)[1]


def command_key(keys: Sequence[str], item: Command | Kick | list[Command]) -> str:
    """The Bytewax key of the shard a command is about (a packed list goes where its items
    go); `keys` names each shard (`flows.placement.shard_keys`)."""
    if isinstance(item, list):
        item = item[0]
    if isinstance(item, Kick):
        return item.key
    if isinstance(item, Routed | Drop):
        target = item.canonical
    elif isinstance(item, Move):
        target = item.loser
    elif isinstance(item, Adopt):
        target = item.survivor
    else:
        assert isinstance(item, Tick)
        return keys[item.shard]
    return keys[shard_of(target, len(keys))]
