"""A ``POST /txn`` transaction on PostgreSQL: one database transaction of its own.

It takes the same transaction-level advisory locks the write batches take, one per
resource named (and one for its Idempotency-Key), all in one statement in key order, so
it queues with every batch and transaction on every host that touches those resources and
none can wait for another in a circle. Then it reads the rows ``FOR UPDATE`` (which also
keeps out the increment fast path's ``UPDATE``), evaluates the transaction there
(``app.txn``) and writes its changes, with one change-log entry per resource under the
revision it takes last, or nothing when an operation cannot apply, and commits once. A
deadlock or serialization failure runs it again from the start; a connection lost during
COMMIT is a 503 that says the outcome is unknown.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from app.changes import counter_changes, record_changes
from app.clock import KeyTimes
from app.errors import LockstepError
from app.idempotency import Stored, to_store, triage
from app.leases import fence_stale
from app.storage.postgres import changes as pg_changes
from app.storage.postgres import idempotency as pg_idempotency
from app.storage.postgres import leases as pg_leases
from app.storage.postgres.pool import Connection
from app.storage.postgres.schema import lock_key
from app.storage.postgres.transaction import (
    read_for_update,
    run_alone,
    write_counters,
    write_records,
)
from app.txn import Txn, TxnOutcome, evaluate


async def _apply(conn: Connection, txn: Txn, times: KeyTimes) -> TxnOutcome:
    """Lock, read, evaluate and write ``txn`` inside the open transaction on ``conn``."""
    names, ids = txn.names("counter"), txn.names("item")
    claim = txn.claim
    keys = [f"counter:{n}" for n in names] + [f"item:{i}" for i in ids]
    keys += [f"idem:{claim.key}"] if claim is not None else []
    keys += [f"lock:{f.name}" for f in txn.fences]
    # unnest yields the sorted keys in order, so locks are always taken in key order.
    locks = sorted({lock_key(k) for k in keys})
    await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k", locks)
    stored: dict[str, Stored] = {}
    if claim is not None:
        stored = await pg_idempotency.load_keys(conn, [claim.key], times.now)
        run, settled = triage([txn], stored)
        if not run:
            return settled[0]  # a Replay, or KeyReused
    if txn.fences:
        stale = await pg_leases.stale_fence(conn, txn.fences)
        if stale is not None:
            outcome: TxnOutcome = fence_stale(stale)
            if claim is not None:
                rows = to_store([txn], [0], [outcome])
                await pg_idempotency.store_keys(conn, rows, times.expires_at)
            return outcome
    counters, items = await read_for_update(conn, names, ids)
    # Last of the locks: from here to COMMIT, write transactions take turns.
    commit = await pg_changes.take_revision(conn)
    try:
        outcome = evaluate(txn, counters, items, commit)
    except LockstepError as e:
        outcome = e
    else:
        encoded = await write_records(conn, items, outcome.items)
        await write_counters(conn, counters, outcome.counters)
        changes = counter_changes(counters, outcome.counters, commit)
        changes += record_changes(items, outcome.items, encoded, commit)
        # The entries commit with the changes they describe, or not at all.
        await pg_changes.write(conn, commit, changes)
        outcome.changed = bool(changes)
        outcome.revision = commit.revision if changes else commit.revision - 1
    if claim is not None:
        await pg_idempotency.store_keys(conn, to_store([txn], [0], [outcome]), times.expires_at)
    return outcome


async def run_txn(
    pool: asyncpg.Pool, wait: float, txn: Txn, key_times: Callable[[], KeyTimes]
) -> TxnOutcome:
    """Run ``txn`` in a transaction of its own, again after a deadlock; its outcome."""
    return await run_alone(pool, wait, "transaction", lambda conn: _apply(conn, txn, key_times()))
