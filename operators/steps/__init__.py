"""The rooms of a record's path. Each module owns its part of the state (the key prefixes it
declares, next to the code that reads and writes them) and exposes a few typed functions over
one transaction (`Call`); `operators.engine` calls them in order, and commits once:

    positions -> privacy (tombstones) -> graph -> profiles -> membership (+ timers) -> outbox

With several processes, `exchange` carries records, moves and deletes from the identity step
to the profile steps. The pure logic these steps apply lives beside them in `operators`
(identity, profile, segments, aggregates, rules). `docs/architecture.md` has the map.
"""
