"""The PostgreSQL fast path for the hottest write: increments of counters that already exist.

A unit made only of increments needs no read in Python: its total can be added by one
atomic ``UPDATE ... RETURNING``, provided the stored value lies in the range where every
intermediate value stays inside 64 bits. That range is part of the ``WHERE`` clause, so
PostgreSQL re-checks it on the latest committed row when the update had to wait for a
concurrent writer. Every unit of the batch goes into ONE autocommit statement (one
round trip, row locks held only while it runs). Units whose counter is absent or whose
stored value is outside the safe range are not touched and take the general path.

The same statement takes the commit's revision and writes its change-log entries
(``app.storage.postgres.changes``): the ``change_feed`` row is locked only after every counter
row, as in the general path, so the two never wait for each other in a circle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.domain import INT64_MAX, INT64_MIN, Counter, CounterOp, Increment


@dataclass(frozen=True, slots=True)
class Plan:
    """What one unit of increments adds, and the stored values it may start from."""

    delta: int
    count: int  # operations, each adding 1 to the version
    lowest_start: int
    highest_start: int


def plan(ops: Sequence[CounterOp]) -> Plan | None:
    """A plan for ``ops`` if they are all increments that fit the fast path, else None."""
    if not ops or not all(isinstance(op, Increment) and op.precondition is None for op in ops):
        return None
    total = low = high = 0
    for op in ops:
        assert isinstance(op, Increment)
        total += op.by
        low, high = min(low, total), max(high, total)
    start_min, start_max = INT64_MIN - low, INT64_MAX - high
    if not INT64_MIN <= total <= INT64_MAX or start_min > start_max:
        return None
    return Plan(total, len(ops), start_min, start_max)


async def increment_existing(
    conn: asyncpg.pool.PoolConnectionProxy[Any], plans: dict[str, Plan], stamp: str
) -> dict[str, tuple[Counter, int]]:
    """Apply every plan whose counter exists and is in range, as one commit at time ``stamp``.

    Returns each updated counter as stored, with the commit's revision, by name.
    """
    names = sorted(plans)  # a consistent order keeps two concurrent batches from deadlocking
    rows = await conn.fetch(
        "WITH updated AS (UPDATE counters AS c"
        " SET value = c.value + d.delta, version = c.version + d.ops"
        " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])"
        " AS d(name, delta, ops, lowest, highest)"
        " WHERE c.name = d.name AND c.value BETWEEN d.lowest AND d.highest"
        " RETURNING c.name, c.value, c.version),"
        # count(*) reads every updated row, so all counter rows are locked before the feed row.
        " feed AS (UPDATE change_feed SET revision = revision + 1"
        " WHERE (SELECT count(*) FROM updated) > 0 RETURNING revision),"
        " entries AS (INSERT INTO changes (revision, kind, key, value, version, time)"
        " SELECT feed.revision, 'counter', u.name, u.value::text, u.version, $6"
        " FROM updated AS u, feed)"
        " SELECT u.name, u.value, u.version, feed.revision FROM updated AS u, feed",
        names,
        [plans[n].delta for n in names],
        [plans[n].count for n in names],
        [plans[n].lowest_start for n in names],
        [plans[n].highest_start for n in names],
        stamp,
    )
    return {r[0]: (Counter(r[0], r[1], r[2]), r[3]) for r in rows}
