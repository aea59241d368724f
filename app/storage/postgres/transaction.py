"""One PostgreSQL write transaction: lock, read, apply and write a batch of units.

How a batch stays correct across hosts (advisory locks in key order, ``FOR UPDATE``,
``app.domain`` in Python, one write per table, then COMMIT) is told in
``app.storage.postgres``; this module is that transaction. A unit whose computation fails
writes nothing and gets its own error; a failure during COMMIT is ``CommitUnknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec

from app.changes import counter_changes, record_changes
from app.clock import KeyTimes
from app.combining import Batch
from app.domain import Counter, Record, apply_counter_ops, apply_record_ops
from app.errors import StorageUnavailable
from app.idempotency import NewKey, Stored, claimed_keys, merge, to_store, triage
from app.storage.postgres import changes as pg_changes
from app.storage.postgres import idempotency as pg_idempotency
from app.storage.postgres.pool import (
    UNAVAILABLE,
    Connection,
    connection,
    decode_record,
)
from app.storage.postgres.schema import lock_key


@dataclass(slots=True)
class Unit:
    kind: str  # "counter" | "item"
    key: str
    batch: Batch[Any]  # taken into ``ops`` when the unit's transaction is about to start
    future: asyncio.Future[Any] = field(repr=False)
    ops: list[Any] = field(default_factory=list)


T = TypeVar("T")


class CommitUnknown(StorageUnavailable):
    """The connection broke while COMMIT was under way: the batch may or may not have landed."""


async def in_transaction(conn: Connection, work: Callable[[], Awaitable[T]]) -> T:
    """``work()``'s result, run in one transaction on ``conn`` and committed.

    Anything raised before COMMIT was sent left nothing behind, so the caller may retry;
    a failure during COMMIT raises ``CommitUnknown``, which must never be retried.
    """
    transaction = conn.transaction()
    await transaction.start()
    try:
        result = await work()
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await transaction.rollback()
        raise
    try:
        await transaction.commit()
    except UNAVAILABLE as e:
        raise CommitUnknown(
            f"database connection lost during COMMIT ({type(e).__name__}); the change may"
            " or may not have been applied"
        ) from e
    return result


RETRIES = 5  # deadlock / serialization failure: the whole transaction runs again
logger = logging.getLogger(__name__)


async def run_alone(
    pool: asyncpg.Pool, wait: float, what: str, work: Callable[[Connection], Awaitable[T]]
) -> T:
    """``work(conn)`` in a transaction of its own, again after a deadlock; its result.

    A server restart gets one more try on a fresh connection (nothing was committed); a
    failure during COMMIT (``CommitUnknown``) is never retried.
    """
    reconnected = False
    for attempt in range(1, RETRIES + 1):
        try:
            async with connection(pool, wait) as conn:
                return await in_transaction(conn, lambda: work(conn))
        except asyncpg.TransactionRollbackError as e:
            if attempt == RETRIES:
                raise
            logger.info("%s retried after %s (attempt %d)", what, e.sqlstate, attempt)
        except CommitUnknown:
            await pool.expire_connections()
            raise
        except UNAVAILABLE:
            await pool.expire_connections()
            if reconnected:
                raise
            reconnected = True
    raise AssertionError("unreachable")


async def commit_batch(
    conn: Connection, batch: list[Unit], times: KeyTimes
) -> list[tuple[bool, Any]]:
    """Run ``batch`` in one transaction on ``conn``; returns (ok, outcome-or-error) per unit."""
    return await in_transaction(conn, lambda: apply_batch(conn, batch, times))


async def apply_batch(
    conn: Connection, batch: list[Unit], times: KeyTimes
) -> list[tuple[bool, Any]]:
    """Lock, read, apply and write ``batch`` inside the open transaction on ``conn``."""
    names = sorted({u.key for u in batch if u.kind == "counter"})
    ids = sorted({u.key for u in batch if u.kind == "item"})
    claims = sorted({k for u in batch for k in claimed_keys(u.ops)})
    locks = sorted(
        {lock_key(f"{u.kind}:{u.key}") for u in batch} | {lock_key(f"idem:{k}") for k in claims}
    )
    # unnest yields the sorted keys in order, so locks are always taken in key order.
    await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k", locks)
    counters, items = await read_for_update(conn, names, ids)
    stored_counters, stored_records = dict(counters), dict(items)
    keys = await pg_idempotency.load_keys(conn, claims, times.now) if claims else {}
    new_keys: list[NewKey] = []
    # Last of the locks: from here to COMMIT, write transactions take turns.
    commit = await pg_changes.take_revision(conn)

    results: list[tuple[bool, Any]] = []
    for unit in batch:
        ops = list(unit.ops)
        outcomes: list[Any]
        try:
            # Ops whose key is stored replay or are refused instead (app.idempotency).
            run, settled = triage(ops, keys)
            todo = [ops[i] for i in run]
            if unit.kind == "counter":
                counters[unit.key], outcomes = apply_counter_ops(
                    unit.key, counters[unit.key], todo, commit
                )
            else:
                final, outcomes = apply_record_ops(unit.key, items[unit.key], todo, commit)
                if final is not None:
                    msgspec.json.encode(final.value)  # fail this unit alone if unencodable
                items[unit.key] = final
            fresh = to_store(ops, run, outcomes)
        except Exception as e:
            results.append((False, e))
            continue
        # Later units of this batch see these keys as stored, as they will be at COMMIT.
        keys.update((row.key, Stored(row.fingerprint, row.response)) for row in fresh)
        new_keys.extend(fresh)
        results.append((True, merge(len(ops), run, outcomes, settled)))

    encoded = await write_records(conn, stored_records, items)
    changes = counter_changes(stored_counters, counters, commit)
    changes += record_changes(stored_records, items, encoded, commit)
    await write_counters(conn, stored_counters, counters)
    await pg_idempotency.store_keys(conn, new_keys, times.expires_at)
    # The entries commit with the changes they describe, or not at all.
    await pg_changes.write(conn, commit, changes)
    return results


async def write_counters(
    conn: Connection, before: dict[str, Counter | None], after: dict[str, Counter | None]
) -> None:
    upserts = [c for k, c in after.items() if c is not None and c != before[k]]
    deletes = [k for k, c in after.items() if c is None and before[k] is not None]
    if upserts:
        await conn.execute(
            "INSERT INTO counters (name, value, version)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, version = excluded.version",
            [c.name for c in upserts],
            [c.value for c in upserts],
            [c.version for c in upserts],
        )
    if deletes:
        await conn.execute("DELETE FROM counters WHERE name = ANY($1::text[])", deletes)


async def write_records(
    conn: Connection, before: dict[str, Record | None], after: dict[str, Record | None]
) -> dict[str, str]:
    """Write the records that changed; returns their values as JSON text, by id."""
    upserts = [r for k, r in after.items() if r is not None and r is not before[k]]
    deletes = [k for k, r in after.items() if r is None and before[k] is not None]
    encoded = {r.id: msgspec.json.encode(r.value).decode() for r in upserts}
    if upserts:
        await conn.execute(
            "INSERT INTO items (id, value, version, updated_at) SELECT * FROM"
            " unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"
            " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
            " version = excluded.version, updated_at = excluded.updated_at",
            [r.id for r in upserts],
            [encoded[r.id] for r in upserts],
            [r.version for r in upserts],
            [r.updated_at for r in upserts],
        )
    if deletes:
        await conn.execute("DELETE FROM items WHERE id = ANY($1::text[])", deletes)
    return encoded


async def read_for_update(
    conn: Connection, names: Sequence[str], ids: Sequence[str]
) -> tuple[dict[str, Counter | None], dict[str, Record | None]]:
    """The named counters and records, row-locked in key order (None where absent)."""
    counters: dict[str, Counter | None] = dict.fromkeys(names)
    if names:
        rows = await conn.fetch(
            "SELECT name, value, version FROM counters WHERE name = ANY($1::text[])"
            " ORDER BY name FOR UPDATE",
            names,
        )
        counters.update((r[0], Counter(r[0], r[1], r[2])) for r in rows)
    items: dict[str, Record | None] = dict.fromkeys(ids)
    if ids:
        rows = await conn.fetch(
            "SELECT id, value, version, updated_at FROM items WHERE id = ANY($1::text[])"
            " ORDER BY id FOR UPDATE",
            ids,
        )
        items.update((r[0], decode_record(r)) for r in rows)
    return counters, items
