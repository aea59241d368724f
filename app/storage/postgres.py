"""PostgreSQL backend: an asyncpg pool and group commit of many resources per transaction.

Cross-host correctness comes from PostgreSQL. A write batch (every unit of work queued
in this worker, one unit per resource the combiner flushed) runs as ONE transaction:

1. take a transaction-level advisory lock per resource, in key order, so every writer
   on every host touching the same resource queues here, whether its row exists yet or
   not (``FOR UPDATE`` alone cannot lock a row that is about to be inserted);
2. read the rows ``FOR UPDATE`` (each statement sees everything committed before the
   lock was granted);
3. apply each unit's operations with ``app.domain`` in Python, exactly as SQLite does;
4. write every changed row with one statement per table, then COMMIT, and only then
   answer the requests.

A unit whose computation fails writes nothing and gets its own error; its batch-mates
commit (the role a savepoint plays in the SQLite writer, without a round trip per unit).
Deadlocks and serialization failures retry the whole batch; a connection whose query
was cancelled, timed out or broke is terminated, never returned to the pool. Nothing
session-level is used, so PgBouncer in transaction mode works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from app.combining import Batch, ops_of
from app.domain import (
    NAME_CEILING,
    CounterOp,
    CounterOutcome,
    ItemOp,
    ItemOutcome,
    Record,
    apply_counter_ops,
    apply_item_ops,
)
from app.errors import StorageUnavailable
from app.idempotency import NewKey, Stored, claimed_keys, merge, to_store, triage
from app.settings import Settings
from app.storage import StorageObserver, pg_idempotency
from app.storage.pg_increments import Plan, increment_existing, plan
from app.storage.pg_schema import lock_key, migrate

# What the pool hands out; it forwards every call to the real connection.
Connection = asyncpg.pool.PoolConnectionProxy

logger = logging.getLogger(__name__)

RETRIES = 5  # deadlock / serialization failure: the whole batch runs again

# Failures that mean "the database is not there right now": answered with 503.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # protocol state after the server dropped the connection
    asyncpg.OperatorInterventionError,  # admin shutdown, cannot connect now, query canceled
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # still deadlocking after RETRIES
)


def _error_kind(e: BaseException) -> str | None:
    """The bounded metric kind (``DB_ERROR_KINDS``) of a database failure, or None."""
    if isinstance(e, asyncpg.DiskFullError):
        return "full"
    if isinstance(e, asyncpg.ReadOnlySQLTransactionError):
        return "readonly"
    if isinstance(e, asyncpg.TransactionRollbackError | asyncpg.LockNotAvailableError):
        return "locked"
    if isinstance(e, asyncpg.InsufficientResourcesError):
        return "busy"
    if isinstance(e, asyncpg.DataCorruptedError | asyncpg.IndexCorruptedError):
        return "corrupt"
    if isinstance(e, _UNAVAILABLE):
        return "io"
    if isinstance(e, asyncpg.PostgresError):
        return "other"
    return None


def _translate(e: BaseException) -> BaseException:
    if isinstance(e, _UNAVAILABLE):
        return StorageUnavailable(f"database: {type(e).__name__}: {e}")
    return e


def _keeps_connection(e: BaseException) -> bool:
    """Whether the connection is certainly idle and outside a transaction after ``e``."""
    return isinstance(e, asyncpg.PostgresError) and not isinstance(
        e, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError
    )


@asynccontextmanager
async def _connection(pool: asyncpg.Pool, wait: float) -> AsyncIterator[Connection]:
    """A pooled connection, terminated instead of reused if anything but SQL went wrong."""
    async with pool.acquire(timeout=wait) as conn:
        try:
            yield conn
        except BaseException as e:
            if not _keeps_connection(e):
                conn.terminate()
            raise


@dataclass(slots=True)
class _Unit:
    kind: str  # "counter" | "item"
    key: str
    batch: Batch[Any]  # taken into ``ops`` when the unit's transaction is about to start
    future: asyncio.Future[Any] = field(repr=False)
    ops: list[Any] = field(default_factory=list)


def _decode_record(row: Any) -> Record:
    return Record(row[0], msgspec.json.decode(row[1]), row[2], row[3])


class _CommitUnknown(StorageUnavailable):
    """The connection broke while COMMIT was under way: the batch may or may not have landed."""


async def _commit_batch(
    conn: Connection, batch: list[_Unit], key_ttl: float
) -> list[tuple[bool, Any]]:
    """Run ``batch`` in one transaction on ``conn``; returns (ok, outcome-or-error) per unit.

    Anything raised before COMMIT was sent left nothing behind, so the caller may retry;
    a failure during COMMIT raises ``_CommitUnknown``, which must never be retried.
    """
    transaction = conn.transaction()
    await transaction.start()
    try:
        results = await _apply_batch(conn, batch, key_ttl)
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await transaction.rollback()
        raise
    try:
        await transaction.commit()
    except _UNAVAILABLE as e:
        raise _CommitUnknown(
            f"database connection lost during COMMIT ({type(e).__name__}); the change may"
            " or may not have been applied"
        ) from e
    return results


async def _apply_batch(
    conn: Connection, batch: list[_Unit], key_ttl: float
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
    counters: dict[str, int | None] = dict.fromkeys(names)
    if names:
        rows = await conn.fetch(
            "SELECT name, value FROM counters WHERE name = ANY($1::text[])"
            " ORDER BY name FOR UPDATE",
            names,
        )
        counters.update((r[0], r[1]) for r in rows)
    items: dict[str, Record | None] = dict.fromkeys(ids)
    if ids:
        rows = await conn.fetch(
            "SELECT id, value, version, updated_at FROM items WHERE id = ANY($1::text[])"
            " ORDER BY id FOR UPDATE",
            ids,
        )
        items.update((r[0], _decode_record(r)) for r in rows)
    stored_counters, stored_items = dict(counters), dict(items)
    now = time.time()
    keys = await pg_idempotency.load_keys(conn, claims, now) if claims else {}
    new_keys: list[NewKey] = []

    results: list[tuple[bool, Any]] = []
    for unit in batch:
        ops = list(unit.ops)
        outcomes: list[Any]
        try:
            # Ops whose key is stored replay or are refused instead (app.idempotency).
            run, settled = triage(ops, keys)
            todo = [ops[i] for i in run]
            if unit.kind == "counter":
                counters[unit.key], outcomes = apply_counter_ops(counters[unit.key], todo)
            else:
                final, outcomes = apply_item_ops(unit.key, items[unit.key], todo)
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

    await _write_counters(conn, stored_counters, counters)
    await _write_items(conn, stored_items, items)
    await pg_idempotency.store_keys(conn, new_keys, now + key_ttl)
    return results


async def _write_counters(
    conn: Connection, before: dict[str, int | None], after: dict[str, int | None]
) -> None:
    upserts = [(k, v) for k, v in after.items() if v is not None and v != before[k]]
    deletes = [k for k, v in after.items() if v is None and before[k] is not None]
    if upserts:
        await conn.execute(
            "INSERT INTO counters (name, value) SELECT * FROM unnest($1::text[], $2::bigint[])"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [k for k, _ in upserts],
            [v for _, v in upserts],
        )
    if deletes:
        await conn.execute("DELETE FROM counters WHERE name = ANY($1::text[])", deletes)


async def _write_items(
    conn: Connection, before: dict[str, Record | None], after: dict[str, Record | None]
) -> None:
    upserts = [r for k, r in after.items() if r is not None and r is not before[k]]
    deletes = [k for k, r in after.items() if r is None and before[k] is not None]
    if upserts:
        await conn.execute(
            "INSERT INTO items (id, value, version, updated_at) SELECT * FROM"
            " unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"
            " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
            " version = excluded.version, updated_at = excluded.updated_at",
            [r.id for r in upserts],
            [msgspec.json.encode(r.value).decode() for r in upserts],
            [r.version for r in upserts],
            [r.updated_at for r in upserts],
        )
    if deletes:
        await conn.execute("DELETE FROM items WHERE id = ANY($1::text[])", deletes)


def _fail(units: list[_Unit], e: BaseException, observer: StorageObserver | None) -> None:
    """Give every unsettled unit the failure ``e`` (cancelled units are cancelled)."""
    kind = _error_kind(e.__cause__ if isinstance(e, _CommitUnknown) and e.__cause__ else e)
    if kind is not None and observer is not None:
        observer.failed(kind)
    if isinstance(e, asyncio.CancelledError):
        for unit in units:
            unit.future.cancel()
        return
    error = _translate(e)
    if not isinstance(error, StorageUnavailable):
        logger.error("write batch failed", exc_info=e)
    for unit in units:
        if not unit.future.done():
            unit.future.set_exception(error)


class _Writer:
    """Queues this worker's units and commits them in batches, ``writers`` transactions at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        observer: StorageObserver | None,
    ) -> None:
        self._pool = pool
        self._observer = observer
        self._key_ttl = settings.idempotency_ttl
        max_batch, writers = settings.max_batch, settings.pg_writers
        timeout = settings.pg_command_timeout
        self._timeout = timeout
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(writers)
        self._queue: deque[_Unit] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._task = asyncio.create_task(self._run(), name="lockstep-postgres-writer")
        self.batches = 0  # committed transactions, for tests and metrics

    def submit(self, kind: str, key: str, ops: Batch[Any]) -> asyncio.Future[Any]:
        """Queue a unit; the future resolves after its batch has committed."""
        if self._closing:
            raise StorageUnavailable("shutting down")
        unit = _Unit(kind, key, ops, asyncio.get_running_loop().create_future())
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
            # Whatever queued while we waited for a slot joins this batch.
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
        try:
            new_values = await self._run_fast({k: p for k, (_, p) in plans.items()})
        except BaseException as e:
            _fail([unit for unit, _ in plans.values()], e, self._observer)
            if isinstance(e, asyncio.CancelledError):
                raise
            return [u for u in batch if u.key not in plans or u.kind != "counter"]
        self._committed(started, len(plans))
        for key, value in new_values.items():
            unit, p = plans[key]
            final, outcomes = apply_counter_ops(value - p.delta, list(unit.ops))
            if unit.future.done():
                continue
            if final != value:  # cannot happen while the WHERE clause guards the range
                logger.error("increment of %r stored %d, expected %s", key, value, final)
                unit.future.set_exception(RuntimeError("increment outcome mismatch"))
            else:
                unit.future.set_result(outcomes)
        return [u for u in batch if not (u.kind == "counter" and u.key in new_values)]

    async def _run_fast(self, plans: dict[str, Plan]) -> dict[str, int]:
        for attempt in range(1, RETRIES + 1):
            async with _connection(self._pool, self._timeout) as conn:
                try:
                    return await increment_existing(conn, plans)
                except asyncpg.TransactionRollbackError as e:
                    # The server aborted the statement: nothing was applied.
                    if attempt == RETRIES:
                        raise
                    logger.info("increments retried after %s (attempt %d)", e.sqlstate, attempt)
                except _UNAVAILABLE as e:
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
                async with _connection(self._pool, self._timeout) as conn:
                    return await _commit_batch(conn, batch, self._key_ttl)
            except asyncpg.TransactionRollbackError as e:
                if attempt == RETRIES:
                    raise
                logger.info("write batch retried after %s (attempt %d)", e.sqlstate, attempt)
            except _CommitUnknown:
                await self._pool.expire_connections()
                raise
            except _UNAVAILABLE:
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


async def _skip_session_reset(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing session-level is ever set, so there is nothing to reset.

    asyncpg's default sends ``RESET ALL; UNLISTEN *; ...`` on every release, one more
    round trip per request. An open transaction is still rolled back on release: the pool
    does that itself before calling this hook.
    """


async def _open_pool(settings: Settings) -> asyncpg.Pool:
    """Connect and migrate, retrying for ``pg_startup_timeout`` while the server is unreachable."""
    deadline = time.monotonic() + settings.pg_startup_timeout
    while True:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=min(settings.pg_pool_min_size, settings.pg_pool_max_size),
                max_size=settings.pg_pool_max_size,
                statement_cache_size=settings.pg_statement_cache_size,
                command_timeout=settings.pg_command_timeout,
                timeout=settings.pg_connect_timeout,
                reset=_skip_session_reset,
                # A startup parameter PgBouncer understands; lets operators find our sessions.
                server_settings={"application_name": "lockstep"},
            )
        except _UNAVAILABLE as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"PostgreSQL unreachable: {e}") from e
            logger.warning("PostgreSQL unreachable (%s); retrying", e)
            await asyncio.sleep(0.5)
            continue
        try:
            async with _connection(pool, settings.pg_command_timeout) as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return pool


class PostgresStorage:
    """The backend for many hosts sharing one PostgreSQL database."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, observer: StorageObserver | None = None
    ) -> None:
        self._pool = pool
        self._timeout = settings.pg_command_timeout
        self._poll_interval = settings.events_poll_interval
        self._writer = _Writer(pool, settings, observer)

    @property
    def batches(self) -> int:
        """How many write transactions this process has committed."""
        return self._writer.batches

    @classmethod
    async def open(
        cls, settings: Settings, observer: StorageObserver | None = None
    ) -> PostgresStorage:
        """Create the pool and migrate the schema under the migration lock."""
        return cls(await _open_pool(settings), settings, observer)

    async def apply_counter_ops(self, name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        outcomes: list[CounterOutcome] = await self._writer.submit("counter", name, ops)
        return outcomes

    async def apply_item_ops(self, item_id: str, ops: Batch[ItemOp]) -> list[ItemOutcome]:
        outcomes: list[ItemOutcome] = await self._writer.submit("item", item_id, ops)
        return outcomes

    async def _read(self, sql: str, *params: Any) -> list[Any]:
        for attempt in (1, 2):
            try:
                async with _connection(self._pool, self._timeout) as conn:
                    return list(await conn.fetch(sql, *params, timeout=self._timeout))
            except _UNAVAILABLE as e:
                # Reads are safe to repeat: once more on fresh connections, then 503.
                await self._pool.expire_connections()
                if attempt == 2:
                    raise StorageUnavailable(f"database: {type(e).__name__}: {e}") from e
        raise AssertionError("unreachable")

    async def purge_expired_keys(self, limit: int) -> int:
        try:
            async with _connection(self._pool, self._timeout) as conn:
                return await pg_idempotency.purge(conn, time.time(), limit)
        except _UNAVAILABLE as e:
            raise StorageUnavailable(f"database: {type(e).__name__}: {e}") from e

    async def get_counter(self, name: str) -> int | None:
        rows = await self._read("SELECT value FROM counters WHERE name = $1", name)
        return rows[0][0] if rows else None

    async def list_counters(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        rows = await self._read(
            "SELECT name, value FROM counters WHERE name >= $1 AND name < $2 AND name > $3"
            " ORDER BY name LIMIT $4",
            prefix,
            prefix + NAME_CEILING,
            after,
            limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def get_item(self, item_id: str) -> Record | None:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id = $1", item_id
        )
        return _decode_record(rows[0]) if rows else None

    async def list_items(self, prefix: str, after: str, limit: int) -> list[Record]:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id >= $1 AND id < $2"
            " AND id > $3 ORDER BY id LIMIT $4",
            prefix,
            prefix + NAME_CEILING,
            after,
            limit,
        )
        return [_decode_record(r) for r in rows]

    async def wait_for_change(self, mark: int) -> int:
        # Every commit writes a WAL record, so the flushed WAL position moves past each one
        # (other databases' writes move it too: an early return, which is allowed). A plain
        # query works behind PgBouncer, unlike LISTEN, and costs the write path nothing,
        # unlike NOTIFY's commit-time queue lock. The low bit of a mark says whether the
        # position was confirmed after a quiet interval: a commit flushed just before the
        # mark was read may become visible a moment later, so each new position is returned
        # once more after an interval, and the caller re-reads what it watches.
        seen, confirmed = divmod(mark, 2) if mark >= 0 else (-1, 1)
        while True:
            rows = await self._read("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")
            position = int(rows[0][0])
            if position != seen:
                return position * 2
            await asyncio.sleep(self._poll_interval)
            if not confirmed:
                return position * 2 + 1

    async def ping(self) -> None:
        await self._read("SELECT 1")

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            await self._pool.close()
