"""The PostgreSQL fast path for the hottest write: increments of counters that already exist.

A unit made only of increments needs no read in Python: its total can be added by one
atomic ``UPDATE ... RETURNING``, provided the stored value lies in the range where every
intermediate value stays inside 64 bits. That range is part of the ``WHERE`` clause, so
PostgreSQL re-checks it on the latest committed row when the update had to wait for a
concurrent writer. Every unit of the batch goes into ONE autocommit statement (one
round trip, row locks held only while it runs). Units whose counter is absent or whose
stored value is outside the safe range are not touched and take the general path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.domain import INT64_MAX, INT64_MIN, CounterOp, Increment


@dataclass(frozen=True, slots=True)
class Plan:
    """What one unit of increments adds, and the stored values it may start from."""

    delta: int
    lowest_start: int
    highest_start: int


def plan(ops: Sequence[CounterOp]) -> Plan | None:
    """A plan for ``ops`` if they are all increments that fit the fast path, else None."""
    if not ops or not all(isinstance(op, Increment) for op in ops):
        return None
    total = low = high = 0
    for op in ops:
        assert isinstance(op, Increment)
        total += op.by
        low, high = min(low, total), max(high, total)
    start_min, start_max = INT64_MIN - low, INT64_MAX - high
    if not INT64_MIN <= total <= INT64_MAX or start_min > start_max:
        return None
    return Plan(total, start_min, start_max)


async def increment_existing(
    conn: asyncpg.pool.PoolConnectionProxy[Any], plans: dict[str, Plan]
) -> dict[str, int]:
    """Apply every plan whose counter exists and is in range; returns the new values by name."""
    names = sorted(plans)  # a consistent order keeps two concurrent batches from deadlocking
    rows = await conn.fetch(
        "UPDATE counters AS c SET value = c.value + d.delta"
        " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])"
        " AS d(name, delta, lowest, highest)"
        " WHERE c.name = d.name AND c.value BETWEEN d.lowest AND d.highest"
        " RETURNING c.name, c.value",
        names,
        [plans[n].delta for n in names],
        [plans[n].lowest_start for n in names],
        [plans[n].highest_start for n in names],
    )
    return {r[0]: r[1] for r in rows}
