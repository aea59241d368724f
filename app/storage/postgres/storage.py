"""The PostgreSQL ``Storage``: writes handed to the writer, reads on pooled connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import asyncpg

from app.changes import Change, FeedPage, feed_page, snapshot_page
from app.clock import ServiceClock
from app.combining import Batch
from app.domain import (
    NAME_CEILING,
    Counter,
    CounterOp,
    CounterOutcome,
    Record,
    RecordOp,
    RecordOutcome,
    now_iso,
)
from app.errors import StorageUnavailable
from app.leases import Decision, Lease, LockState, Step
from app.settings import Settings
from app.storage import StorageObserver
from app.storage.postgres import changes as pg_changes
from app.storage.postgres import idempotency as pg_idempotency
from app.storage.postgres import leases as pg_leases
from app.storage.postgres.pool import (
    UNAVAILABLE,
    Connection,
    connection,
    decode_record,
    error_kind,
    open_pool,
)
from app.storage.postgres.txn import run_txn
from app.storage.postgres.writer import Writer
from app.txn import Txn, TxnOutcome

T = TypeVar("T")


class PostgresStorage:
    """The backend for many hosts sharing one PostgreSQL database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        observer: StorageObserver | None = None,
        clock: ServiceClock | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock or ServiceClock()
        self._timeout = settings.pg_command_timeout
        self._poll_interval = settings.events_poll_interval
        self._observer = observer
        self._key_ttl = settings.idempotency_ttl
        self._writer = Writer(pool, settings, observer, self._clock)

    @property
    def batches(self) -> int:
        """How many write transactions this process has committed."""
        return self._writer.batches

    @classmethod
    async def open(
        cls,
        settings: Settings,
        observer: StorageObserver | None = None,
        clock: ServiceClock | None = None,
    ) -> PostgresStorage:
        """Create the pool and migrate the schema under the migration lock."""
        return cls(await open_pool(settings), settings, observer, clock)

    # Plain methods: the writer's future is handed back as it is, so a combiner's batch
    # costs no task of its own (a coroutine would be wrapped in one per batch).
    def apply_counter_ops(
        self, name: str, ops: Batch[CounterOp]
    ) -> asyncio.Future[list[CounterOutcome]]:
        return self._writer.submit("counter", name, ops)

    def apply_record_ops(
        self, record_id: str, ops: Batch[RecordOp]
    ) -> asyncio.Future[list[RecordOutcome]]:
        return self._writer.submit("item", record_id, ops)

    async def _read(self, sql: str, *params: Any) -> list[Any]:
        return list(
            await self._reading(lambda conn: conn.fetch(sql, *params, timeout=self._timeout))
        )

    async def _reading(self, read: Callable[[Connection], Awaitable[T]]) -> T:
        """``read`` on a pooled connection; reads are safe to repeat: once more on fresh
        connections, then 503."""
        for attempt in (1, 2):
            try:
                async with connection(self._pool, self._timeout) as conn:
                    return await read(conn)
            except UNAVAILABLE as e:
                await self._pool.expire_connections()
                if attempt == 2:
                    raise StorageUnavailable(f"database: {type(e).__name__}: {e}") from e
        raise AssertionError("unreachable")

    async def _alone(self, run: Awaitable[T]) -> T:
        """A transaction that runs on its own (not in a writer's batch), counted and timed
        as a commit; an unreachable database is a 503."""
        started = time.perf_counter()
        try:
            result = await run
        except UNAVAILABLE as e:
            if self._observer is not None:
                self._observer.failed(error_kind(e) or "other")
            raise StorageUnavailable(f"database: {type(e).__name__}: {e}") from e
        if self._observer is not None:
            self._observer.committed(time.perf_counter() - started, 1)
        return result

    async def apply_txn(self, txn: Txn) -> TxnOutcome:
        key_times = partial(self._clock.key_times, self._key_ttl)
        return await self._alone(run_txn(self._pool, self._timeout, txn, key_times))

    async def lock_step(self, name: str, step: Step) -> Decision:
        return await self._alone(pg_leases.run_step(self._pool, self._timeout, name, step))

    async def read_lock(self, name: str) -> tuple[LockState, float]:
        return await self._reading(lambda conn: pg_leases.read_lock(conn, name))

    async def list_locks(self, prefix: str, after: str, limit: int) -> list[Lease]:
        rows = await self._read(pg_leases.LIST_LOCKS, prefix, prefix + NAME_CEILING, after, limit)
        return [Lease(*row) for row in rows]

    async def ended_locks(self, limit: int) -> list[str]:
        return [row[0] for row in await self._read(pg_leases.ENDED, limit)]

    async def purge_expired_keys(self, limit: int) -> int:
        try:
            async with connection(self._pool, self._timeout) as conn:
                return await pg_idempotency.purge(conn, self._clock.expiry_now(), limit)
        except UNAVAILABLE as e:
            raise StorageUnavailable(f"database: {type(e).__name__}: {e}") from e

    async def purge_changes(self, cutoff: str, limit: int) -> int:
        try:
            async with connection(self._pool, self._timeout) as conn:
                return await pg_changes.purge(conn, cutoff, limit)
        except UNAVAILABLE as e:
            raise StorageUnavailable(f"database: {type(e).__name__}: {e}") from e

    async def get_counter(self, name: str) -> Counter | None:
        rows = await self._read("SELECT value, version FROM counters WHERE name = $1", name)
        return Counter(name, rows[0][0], rows[0][1]) if rows else None

    async def list_counters(self, prefix: str, after: str, limit: int) -> list[Counter]:
        rows = await self._read(
            "SELECT name, value, version FROM counters WHERE name >= $1 AND name < $2"
            " AND name > $3 ORDER BY name LIMIT $4",
            prefix,
            prefix + NAME_CEILING,
            after,
            limit,
        )
        return [Counter(r[0], r[1], r[2]) for r in rows]

    async def get_record(self, record_id: str) -> Record | None:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id = $1", record_id
        )
        return decode_record(rows[0]) if rows else None

    async def list_records(self, prefix: str, after: str, limit: int) -> list[Record]:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id >= $1 AND id < $2"
            " AND id > $3 ORDER BY id LIMIT $4",
            prefix,
            prefix + NAME_CEILING,
            after,
            limit,
        )
        return [decode_record(r) for r in rows]

    async def feed(self) -> tuple[int, int]:
        rows = await self._read("SELECT revision, purged_through FROM change_feed")
        return rows[0][0], rows[0][1]

    async def read_changes(
        self,
        since: int,
        limit: int,
        kind: str | None = None,
        prefix: str = "",
        resources: list[tuple[str, str]] | None = None,
        inline_max: int | None = None,
    ) -> FeedPage:
        sql, params = pg_changes.changes_query(since, limit, kind, prefix, resources, inline_max)
        return feed_page(await self._read(sql, *params))

    async def record_versions(
        self, record_id: str, before: int, limit: int, version: int | None = None
    ) -> list[Change]:
        sql, params = pg_changes.versions_query(record_id, before, limit, version)
        return [Change(*tuple(row)[:6]) for row in await self._read(sql, *params)]

    async def deferred_value(self, change: Change, snapshot: bool = False) -> str | None:
        params: tuple[Any, ...]
        if snapshot:
            sql, params = pg_changes.SNAPSHOT_VALUE, (change.key, change.version, change.revision)
        else:
            sql, params = pg_changes.CHANGE_VALUE, (change.revision, change.kind, change.key)
        rows = await self._read(sql, *params)
        return rows[0][0] if rows else None

    async def snapshot(
        self,
        kind: str | None = None,
        prefix: str = "",
        resources: list[tuple[str, str]] | None = None,
        inline_max: int | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> FeedPage:
        sql, params = pg_changes.snapshot_query(kind, prefix, resources, inline_max, after, limit)
        return snapshot_page(await self._read(sql, *params), resources, now_iso())

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

    def write_trouble(self) -> str | None:
        return None  # PostgreSQL's own disk trouble shows as failed reads and writes (503)

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            await self._pool.close()
