"""The PostgreSQL writer: each worker's units, committed many resources per transaction.

How a batch stays correct across hosts (advisory locks in key order, ``FOR UPDATE``,
``app.domain`` in Python, one write per table, then COMMIT) is told in
``app.storage.postgres``. This module runs it: it queues units, takes a combiner's open
batch when a transaction slot is free and the event loop has run a few more turns
(``Gatherer``, as SQLite's writer does), retries deadlocks, never retries a COMMIT whose
fate is unknown, and answers every unit exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from app.changes import counter_changes, item_changes
from app.clock import KeyTimes, ServiceClock
from app.combining import Batch, ops_of
from app.domain import Commit, Counter, Record, apply_counter_ops, apply_item_ops, now_iso
from app.errors import StorageUnavailable
from app.idempotency import NewKey, Stored, claimed_keys, merge, to_store, triage
from app.settings import Settings
from app.storage import StorageObserver
from app.storage.batching import Gatherer
from app.storage.postgres import changes as pg_changes
from app.storage.postgres import idempotency as pg_idempotency
from app.storage.postgres.increments import Plan, increment_existing, plan
from app.storage.postgres.pool import (
    UNAVAILABLE,
    Connection,
    connection,
    decode_record,
    error_kind,
    translate,
)
from app.storage.postgres.schema import lock_key

logger = logging.getLogger(__name__)

RETRIES = 5  # deadlock / serialization failure: the whole batch runs again


@dataclass(slots=True)
class _Unit:
    kind: str  # "counter" | "item"
    key: str
    batch: Batch[Any]  # taken into ``ops`` when the unit's transaction is about to start
    future: asyncio.Future[Any] = field(repr=False)
    ops: list[Any] = field(default_factory=list)


class _CommitUnknown(StorageUnavailable):
    """The connection broke while COMMIT was under way: the batch may or may not have landed."""


async def _commit_batch(
    conn: Connection, batch: list[_Unit], times: KeyTimes
) -> list[tuple[bool, Any]]:
    """Run ``batch`` in one transaction on ``conn``; returns (ok, outcome-or-error) per unit.

    Anything raised before COMMIT was sent left nothing behind, so the caller may retry;
    a failure during COMMIT raises ``_CommitUnknown``, which must never be retried.
    """
    transaction = conn.transaction()
    await transaction.start()
    try:
        results = await _apply_batch(conn, batch, times)
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await transaction.rollback()
        raise
    try:
        await transaction.commit()
    except UNAVAILABLE as e:
        raise _CommitUnknown(
            f"database connection lost during COMMIT ({type(e).__name__}); the change may"
            " or may not have been applied"
        ) from e
    return results


async def _apply_batch(
    conn: Connection, batch: list[_Unit], times: KeyTimes
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
    stored_counters, stored_items = dict(counters), dict(items)
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
                final, outcomes = apply_item_ops(unit.key, items[unit.key], todo, commit)
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

    encoded = await _write_items(conn, stored_items, items)
    changes = counter_changes(stored_counters, counters, commit)
    changes += item_changes(stored_items, items, encoded, commit)
    await _write_counters(conn, stored_counters, counters)
    await pg_idempotency.store_keys(conn, new_keys, times.expires_at)
    # The entries commit with the changes they describe, or not at all.
    await pg_changes.write(conn, commit, changes)
    return results


async def _write_counters(
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


async def _write_items(
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


def _fail(units: list[_Unit], e: BaseException, observer: StorageObserver | None) -> None:
    """Give every unsettled unit the failure ``e`` (cancelled units are cancelled)."""
    kind = error_kind(e.__cause__ if isinstance(e, _CommitUnknown) and e.__cause__ else e)
    if kind is not None and observer is not None:
        observer.failed(kind)
    if isinstance(e, asyncio.CancelledError):
        for unit in units:
            unit.future.cancel()
        return
    error = translate(e)
    if not isinstance(error, StorageUnavailable):
        logger.error("write batch failed", exc_info=e)
    for unit in units:
        if not unit.future.done():
            unit.future.set_exception(error)


class Writer:
    """Queues this worker's units and commits them in batches, ``writers`` transactions at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        observer: StorageObserver | None,
        clock: ServiceClock,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._observer = observer
        self._key_ttl = settings.idempotency_ttl
        max_batch, writers = settings.max_batch, settings.pg_writers
        timeout = settings.pg_command_timeout
        self._timeout = timeout
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(writers)
        self._gatherer = Gatherer(settings.commit_gather)
        self._queue: deque[_Unit] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._inflight: set[asyncio.Task[None]] = set()
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="lockstep-postgres-writer")
        self.batches = 0  # committed transactions, for tests and metrics

    def submit(self, kind: str, key: str, ops: Batch[Any]) -> asyncio.Future[Any]:
        """Queue a unit; the future resolves after its batch has committed."""
        if self._closing:
            raise StorageUnavailable("shutting down")
        unit = _Unit(kind, key, ops, self._loop.create_future())
        self._queue.append(unit)
        self._wakeup.set()
        return unit.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            # Whatever queued while we waited for a slot, or arrives over the next few busy
            # loop turns, joins this batch: without those turns, a resource's next batch
            # would be taken the moment its previous one settled, before the requests just
            # answered could send their next ones (docs/design.md has the figures).
            if self._gatherer.turns:
                await self._gatherer.gather()
            size = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
            for unit in batch:  # a combiner's batch is open until now
                unit.ops = ops_of(unit.batch)
            task = asyncio.create_task(self._commit(batch))
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _commit(self, batch: list[_Unit]) -> None:
        try:
            await self._commit_all(batch)
        finally:
            # Whatever went wrong, no request may wait forever for its outcome.
            for unit in batch:
                if not unit.future.done():
                    unit.future.set_exception(RuntimeError("write batch ended without an outcome"))

    async def _commit_all(self, batch: list[_Unit]) -> None:
        batch = await self._increment_fast(batch)
        if not batch:
            return
        started = time.perf_counter()
        try:
            results = await self._commit_with_retries(batch)
        except BaseException as e:
            _fail(batch, e, self._observer)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self._committed(started, len(batch))
        for unit, (ok, value) in zip(batch, results, strict=True):
            if unit.future.done():
                continue
            if ok:
                unit.future.set_result(value)
            else:
                unit.future.set_exception(value)

    def _committed(self, started: float, units: int) -> None:
        self.batches += 1
        if self._observer is not None:
            self._observer.committed(time.perf_counter() - started, units)

    async def _increment_fast(self, batch: list[_Unit]) -> list[_Unit]:
        """Settle the units the increment fast path can take; returns the rest."""
        seen: dict[str, int] = {}
        for u in batch:
            seen[f"{u.kind}:{u.key}"] = seen.get(f"{u.kind}:{u.key}", 0) + 1
        plans: dict[str, tuple[_Unit, Plan]] = {}
        for u in batch:
            # A key queued twice in one batch must see its own first write: general path.
            # Claimed ops need their key looked up in a transaction: general path too.
            if u.kind == "counter" and seen[f"counter:{u.key}"] == 1 and not claimed_keys(u.ops):
                p = plan(u.ops)
                if p is not None:
                    plans[u.key] = (u, p)
        if not plans:
            return batch
        started = time.perf_counter()
        stamp = now_iso()
        try:
            new_values = await self._run_fast({k: p for k, (_, p) in plans.items()}, stamp)
        except BaseException as e:
            _fail([unit for unit, _ in plans.values()], e, self._observer)
            if isinstance(e, asyncio.CancelledError):
                raise
            return [u for u in batch if u.key not in plans or u.kind != "counter"]
        self._committed(started, len(plans))
        for key, (stored, revision) in new_values.items():
            unit, p = plans[key]
            before = Counter(key, stored.value - p.delta, stored.version - p.count)
            final, outcomes = apply_counter_ops(
                key, before, list(unit.ops), Commit(revision, stamp)
            )
            if unit.future.done():
                continue
            if final != stored:  # cannot happen while the WHERE clause guards the range
                logger.error("increment of %r stored %s, expected %s", key, stored, final)
                unit.future.set_exception(RuntimeError("increment outcome mismatch"))
            else:
                unit.future.set_result(outcomes)
        return [u for u in batch if not (u.kind == "counter" and u.key in new_values)]

    async def _run_fast(self, plans: dict[str, Plan], stamp: str) -> dict[str, tuple[Counter, int]]:
        for attempt in range(1, RETRIES + 1):
            async with connection(self._pool, self._timeout) as conn:
                try:
                    return await increment_existing(conn, plans, stamp)
                except asyncpg.TransactionRollbackError as e:
                    # The server aborted the statement: nothing was applied.
                    if attempt == RETRIES:
                        raise
                    logger.info("increments retried after %s (attempt %d)", e.sqlstate, attempt)
                except UNAVAILABLE as e:
                    # The statement commits by itself: once sent, its fate is unknown.
                    raise _CommitUnknown(
                        f"database connection lost during an increment ({type(e).__name__});"
                        " it may or may not have been applied"
                    ) from e
        raise AssertionError("unreachable")

    async def _commit_with_retries(self, batch: list[_Unit]) -> list[tuple[bool, Any]]:
        reconnected = False
        for attempt in range(1, RETRIES + 1):
            try:
                async with connection(self._pool, self._timeout) as conn:
                    times = self._clock.key_times(self._key_ttl)
                    return await _commit_batch(conn, batch, times)
            except asyncpg.TransactionRollbackError as e:
                if attempt == RETRIES:
                    raise
                logger.info("write batch retried after %s (attempt %d)", e.sqlstate, attempt)
            except _CommitUnknown:
                await self._pool.expire_connections()
                raise
            except UNAVAILABLE:
                # Nothing was committed. After a server restart every pooled connection
                # is dead: drop them all and try once more on a fresh one.
                await self._pool.expire_connections()
                if reconnected:
                    raise
                reconnected = True
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Commit everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
