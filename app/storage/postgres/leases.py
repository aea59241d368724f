"""Leases in PostgreSQL: the tables, one step as a transaction of its own, fences, the reads.

A step takes the transaction-level advisory lock ``lock:<name>`` (the same key on every
host, and the one a fenced write takes), reads the lock's row ``FOR UPDATE`` and its
waiters, and the server's ``clock_timestamp()`` as "now", so every host judges expiry by
one clock. ``app.leases`` decides; the row, the waiters and the change-log entry are
written in the same transaction, under a revision taken last as every writer does. The
row is never deleted, so fencing tokens keep increasing.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from app.changes import Change
from app.leases import (
    LOCK_COLUMNS,
    WAITER_COLUMNS,
    Decision,
    Fence,
    LockState,
    Queued,
    Step,
    decide,
    fence_holds,
    lock_row,
    read_state,
)
from app.storage.postgres import changes as pg_changes
from app.storage.postgres.pool import Connection
from app.storage.postgres.schema import lock_key
from app.storage.postgres.transaction import run_alone

NOW = "extract(epoch FROM clock_timestamp())::double precision"
SELECT_LOCK = f"SELECT {LOCK_COLUMNS} FROM locks WHERE name = $1"
SELECT_WAITERS = f"SELECT {WAITER_COLUMNS} FROM lock_waiters WHERE name = $1 ORDER BY seq"
_UPSERT_LOCK = (
    f"INSERT INTO locks (name, {LOCK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (name) DO UPDATE SET last_token = excluded.last_token,"
    " token = excluded.token, owner = excluded.owner, expires_at = excluded.expires_at,"
    " ttl = excluded.ttl, claim_by = excluded.claim_by, waiter = excluded.waiter"
)
_HELD = f"token IS NOT NULL AND expires_at > {NOW} AND (claim_by IS NULL OR claim_by > {NOW})"
LIST_LOCKS = (
    "SELECT name, token, owner, expires_at FROM locks WHERE name >= $1 AND name < $2"
    f" AND name > $3 AND {_HELD} ORDER BY name LIMIT $4"
)
ENDED = (
    f"SELECT name FROM locks WHERE token IS NOT NULL AND (expires_at <= {NOW}"
    f" OR claim_by <= {NOW}) ORDER BY expires_at LIMIT $1"
)


async def _apply(conn: Connection, name: str, step: Step) -> Decision:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(f"lock:{name}"))
    row = await conn.fetchrow(SELECT_LOCK + " FOR UPDATE", name)
    waiters = await conn.fetch(SELECT_WAITERS, name)
    now: float = await conn.fetchval(f"SELECT {NOW}")
    before = read_state(name, row, waiters)
    decision = decide(before, step, now)
    after = decision.after
    if after.holder != before.holder or after.last_token != before.last_token:
        await conn.execute(_UPSERT_LOCK, *lock_row(after))
    if decision.removed:
        await conn.execute(
            "DELETE FROM lock_waiters WHERE seq = ANY($1::bigint[])", decision.removed
        )
    if decision.refreshed:
        await conn.execute(
            "UPDATE lock_waiters AS w SET alive_until = r.alive FROM"
            " unnest($1::bigint[], $2::double precision[]) AS r(seq, alive) WHERE w.seq = r.seq",
            list(decision.refreshed),
            list(decision.refreshed.values()),
        )
    waiter = decision.enqueue
    if waiter is not None:
        seq = await conn.fetchval(
            "INSERT INTO lock_waiters (name, owner, ttl, alive_until) VALUES ($1, $2, $3, $4)"
            " RETURNING seq",
            name,
            waiter.owner,
            waiter.ttl,
            waiter.alive_until,
        )
        decision.outcome = Queued(seq, after.holder)
    if decision.entry is None:
        decision.revision = await conn.fetchval("SELECT revision FROM change_feed")
        return decision
    # Last of the locks: from here to COMMIT, write transactions take turns.
    commit = await pg_changes.take_revision(conn)
    value = Change(
        commit.revision,
        "lock",
        name,
        msgspec.json.encode(decision.entry).decode(),
        decision.entry["token"],
        commit.time,
    )
    await pg_changes.write(conn, commit, [value])
    decision.revision = commit.revision
    return decision


async def run_step(pool: asyncpg.Pool, wait: float, name: str, step: Step) -> Decision:
    """Run one step in a transaction of its own, again after a deadlock; its decision."""
    return await run_alone(pool, wait, "lock step", lambda conn: _apply(conn, name, step))


async def stale_fence(conn: Connection, fences: Sequence[Fence]) -> Fence | None:
    """Inside a transaction holding the fences' advisory locks: the first fence whose lock
    is not held by its token, or None. The rows are locked until COMMIT."""
    names = sorted(f.name for f in fences)
    rows = await conn.fetch(
        f"SELECT name, {LOCK_COLUMNS} FROM locks WHERE name = ANY($1::text[])"
        " ORDER BY name FOR SHARE",
        names,
    )
    now: float = await conn.fetchval(f"SELECT {NOW}")
    found = {r[0]: tuple(r)[1:] for r in rows}
    for fence in sorted(fences):
        state = read_state(fence.name, found.get(fence.name), [])
        if not fence_holds(state, fence.token, now):
            return fence
    return None


async def read_lock(conn: Connection, name: str) -> tuple[LockState, float]:
    """The lock and its waiters from one snapshot, and the server's now."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(SELECT_LOCK, name)
        waiters = await conn.fetch(SELECT_WAITERS, name)
        now: float = await conn.fetchval(f"SELECT {NOW}")
    return read_state(name, row, waiters), now
