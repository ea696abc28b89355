"""The dataflow: sources -> decode -> identity/profile/segments -> destinations.

One process (any number of worker threads) applies identity, profile and segments in one step,
over one engine and store shared by its workers:
```
read ─► decode ─┬─► route_by_identity ─► apply_records ─► render_<dest> ─► <dest>
                └─► dead letters
```
Several processes (`-i/-a`): the identity graph is one Bytewax key, which sees every record;
profiles and segments are applied on shard keys spread over the processes; a profile that
merged away moves to its survivor's shard through the feedback topic:
```
read ─► decode ─► resolve_identities ─┬─► apply_records ─► destinations
                        (key: graph)  │    (shard keys)  └─► feedback topic ─┐
                                      └──────────◄── read_feedback ◄─────────┘
```
`build_flow(settings, options)` is a factory with no side effects; the state store opens on
the worker when the first record arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from config.settings import Settings
from flows import feedback, io
from flows.apply import _ApplyRecords, command_key
from flows.kicks import KickSource, kicks
from flows.options import RunOptions
from flows.placement import shard_keys
from flows.read import decoded_records
from flows.write import Delivered, write_changes, write_dead_letters
from operators.steps.call import Output
from operators.store import shard_of
from schemas.records import (
    Adopt,
    Command,
    Forget,
    Kick,
    Record,
)


def router(settings: Settings, workers: int) -> Callable[[Record | Forget | Kick], str]:
    """The Bytewax key of a record. One worker: a single key, so records are applied in input
    order. Several: the shard of the record's highest-priority identity."""
    if workers <= 1:
        return lambda _record: "0000"
    shards = settings.shards

    def route(item: Record | Forget | Kick) -> str:
        if isinstance(item, Kick):
            return item.key
        identity = item.identity if isinstance(item, Forget) else item.identities[0]
        return f"{shard_of(identity, shards):04d}"

    return route


def build_flow(settings: Settings, options: RunOptions) -> Dataflow:
    flow = Dataflow("cdp")
    records, dead, raw_parts = decoded_records(flow, settings, options)
    if options.clustered:
        changes = _apply_on_processes(flow, records, settings, options, raw_parts)
    else:
        route = router(settings, options.workers)
        per_shard = options.workers > 1
        started = op.input(
            "rollout", flow, KickSource(kicks(settings.shards, per_shard, lambda s: f"{s:04d}"))
        )
        inputs = op.merge("records_and_rollout", records, started)
        keyed = op.key_on("route_by_identity", inputs, route)
        applied = op.stateful_batch(
            "apply_records", keyed, lambda resume: _ApplyRecords(settings, options, route, resume)
        )
        changes = _only_changes(op.key_rm("unkey_changes", applied))
    write_changes(changes, settings, options)
    write_dead_letters(dead, settings)
    return flow


def _only_changes(outputs: Stream[Output]) -> Stream[Delivered]:
    """One process emits only audience changes, journey sends and profile documents
    (commands exist with several processes)."""
    return outputs  # type: ignore[return-value]


def _apply_on_processes(
    flow: Dataflow,
    records: Stream[Record | Forget],
    settings: Settings,
    options: RunOptions,
    raw_parts: Callable[[], int],
) -> Stream[Delivered]:
    """Identity on one key, profiles on shard keys, moves through the feedback topic."""
    # Every record goes to the graph key, a list per input batch (see `_packed`).
    packed = op.flat_map_batch("pack_for_graph", records, lambda batch: [batch])
    graph_key, keys = shard_keys(settings.shards, options.processes * options.workers)
    to_graph = op.key_on("to_graph", packed, lambda _r: graph_key)
    graph = op.stateful_batch(
        "resolve_identities",
        to_graph,
        lambda resume: _ApplyRecords(settings, options, lambda _r: graph_key, resume, "graph"),
    )
    graph_out: Stream[Command] = op.key_rm("unkey_graph", graph)  # type: ignore[arg-type]
    config = settings.kafka.client_config()
    topic = settings.identity.feedback_topic
    ends = None
    if options.mode != "live":
        processes = options.processes
        ends = lambda: feedback.Termination(processes, raw_parts())  # noqa: E731
    moved = op.input(
        "read_feedback", flow, feedback.FeedbackSource(dict(config), topic, options.run, ends)
    )
    started = op.input("rollout", flow, KickSource(kicks(settings.shards, True, lambda s: keys[s])))
    commands = op.merge("commands", graph_out, moved, started)
    key = partial(command_key, keys)
    keyed = op.key_on("to_shard", commands, key)
    applied = op.stateful_batch(
        "apply_records",
        keyed,
        lambda resume: _ApplyRecords(settings, options, key, resume, "profile"),
    )
    outputs = op.key_rm("unkey_outputs", applied)
    split = op.branch("split_feedback", outputs, lambda x: not isinstance(x, Adopt))
    moves: Stream[Adopt] = split.falses  # type: ignore[assignment]
    run = options.run
    messages = op.map(
        "encode_feedback",
        moves,
        lambda a: io.keyed_message(
            f"{a.survivor[0]}:{a.survivor[1]}", feedback.encode_command(run, a)
        ),
    )
    routed = op.key_on("route_feedback", messages, lambda _m: "0")
    brokers = config.pop("bootstrap.servers")
    op.output("write_feedback", routed, io.kafka_topic_sink(brokers, topic, config))
    return split.trues  # type: ignore[return-value]
