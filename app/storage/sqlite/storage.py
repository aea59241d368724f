"""The SQLite ``Storage``: opening the database, handing writes to the writer, the reads."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

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
from app.leases import Decision, Lease, LockState, Step, read_state
from app.settings import Settings
from app.startup import StartupError
from app.storage import StorageObserver
from app.storage.sqlite import changes as sqlite_changes
from app.storage.sqlite import leases as sqlite_leases
from app.storage.sqlite.connection import error_kind, in_db_thread
from app.storage.sqlite.file import DatabaseFile, connect_uri, write_marker
from app.storage.sqlite.idempotency import purge_unit
from app.storage.sqlite.reads import BatchedReader
from app.storage.sqlite.schema import (
    MIN_SQLITE,
    refusal,
    start_up,
)
from app.storage.sqlite.txn import txn_unit
from app.storage.sqlite.writer import Writer, probe
from app.storage.sqlite.writes import (
    CounterWrites,
    RecordWrites,
    Unit,
    decode_record,
    purge_changes_unit,
)
from app.txn import Txn, TxnOutcome


class SQLiteStorage:
    """The embedded default backend."""

    def __init__(
        self,
        writer_db: aiosqlite.Connection,
        reader_db: aiosqlite.Connection,
        settings: Settings,
        turn_fd: int,
        db_file: DatabaseFile,
        observer: StorageObserver | None = None,
        clock: ServiceClock | None = None,
    ) -> None:
        self._clock = clock or ServiceClock()
        self._writer_db = writer_db
        self._reader_db = reader_db
        self._turn_fd = turn_fd
        self._db_file = db_file
        self._observer = observer
        self._poll_interval = settings.events_poll_interval
        self._key_times = partial(self._clock.key_times, settings.idempotency_ttl)
        self._writer = Writer(
            writer_db,
            settings.max_batch,
            turn_fd,
            db_file,
            f"{settings.sqlite_path}-wal",
            settings.wal_size_limit,
            settings.busy_timeout_ms,
            observer,
            settings.commit_gather,
        )
        self._reader = BatchedReader(partial(in_db_thread, reader_db), settings.max_batch)

    @property
    def checkpoints(self) -> int:
        """How many TRUNCATE checkpoints this process's writer has completed."""
        return self._writer.checkpoints

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
    ) -> SQLiteStorage:
        """Connect, set durability pragmas, migrate; refuse SQLite older than 3.35."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StartupError(
                f"lockstep needs SQLite >= 3.35 (RETURNING, UPSERT); this Python has"
                f" {sqlite3.sqlite_version}: run it with a Python built on a newer SQLite"
            )
        path: Path = settings.sqlite_path
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = connect_uri(path)  # refuses to create a database where one was served
        turn_fd = os.open(f"{path}.writer-turn", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            writer_db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except BaseException:
            os.close(turn_fd)
            raise
        try:
            await in_db_thread(
                writer_db,
                start_up,
                settings.busy_timeout_ms,
                settings.synchronous,
                turn_fd,
                settings.wal_size_limit,
            )
            write_marker(path)
            db_file = DatabaseFile(path)
            reader_db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except BaseException as e:
            await writer_db.close()
            os.close(turn_fd)
            refused = refusal(settings, e)
            if refused is not None:
                raise refused from e
            raise
        try:
            await reader_db.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout_ms)}")
            await reader_db.execute("PRAGMA query_only = 1")
        except BaseException:
            await reader_db.close()
            await writer_db.close()
            os.close(turn_fd)
            raise
        return cls(writer_db, reader_db, settings, turn_fd, db_file, observer, clock)

    async def _write(self, unit: Unit) -> Any:
        return await self._writer.submit(unit)

    # Plain methods: the writer's future is handed back as it is, so a combiner's batch
    # costs no task of its own (a coroutine would be wrapped in one per batch).
    def apply_counter_ops(
        self, name: str, ops: Batch[CounterOp]
    ) -> asyncio.Future[list[CounterOutcome]]:
        return self._writer.submit(CounterWrites(name, ops, self._key_times))

    def apply_record_ops(
        self, record_id: str, ops: Batch[RecordOp]
    ) -> asyncio.Future[list[RecordOutcome]]:
        return self._writer.submit(RecordWrites(record_id, ops, self._key_times))

    def apply_txn(self, txn: Txn) -> asyncio.Future[TxnOutcome]:
        times = self._key_times() if txn.claim is not None else None
        return self._writer.submit(txn_unit(txn, times, self._clock.expiry_now))

    def lock_step(self, name: str, step: Step) -> asyncio.Future[Decision]:
        return self._writer.submit(sqlite_leases.step_unit(name, step, self._clock.expiry_now))

    async def read_lock(self, name: str) -> tuple[LockState, float]:
        now = self._clock.expiry_now()
        row = await self._read(sqlite_leases.SELECT_LOCK, (name,))
        waiters = await self._read(sqlite_leases.SELECT_WAITERS, (name,))
        return read_state(name, row[0] if row else None, waiters), now

    async def list_locks(self, prefix: str, after: str, limit: int) -> list[Lease]:
        now = self._clock.expiry_now()
        rows = await self._read(
            sqlite_leases.LIST_LOCKS, (prefix, prefix + NAME_CEILING, after, now, now, limit)
        )
        return [Lease(*row) for row in rows]

    async def ended_locks(self, limit: int) -> list[str]:
        now = self._clock.expiry_now()
        return [row[0] for row in await self._read(sqlite_leases.ENDED, (now, now, limit))]

    async def purge_expired_keys(self, limit: int) -> int:
        deleted: int = await self._write(purge_unit(self._clock.expiry_now(), limit))
        return deleted

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            # Reads waiting together share one thread hop (see app.storage.sqlite.reads).
            rows = await self._reader.fetch(sql, params)
        except (sqlite3.Error, ValueError) as e:
            # ValueError: aiosqlite's "no active connection" once the reader is closed.
            if self._observer is not None:
                self._observer.failed(error_kind(e) or "other")
            raise StorageUnavailable(f"database: {e}") from e
        return list(rows)

    async def get_counter(self, name: str) -> Counter | None:
        rows = await self._read("SELECT value, version FROM counters WHERE name = ?", (name,))
        return Counter(name, rows[0][0], rows[0][1]) if rows else None

    async def list_counters(self, prefix: str, after: str, limit: int) -> list[Counter]:
        rows = await self._read(
            "SELECT name, value, version FROM counters WHERE name >= ? AND name < ?"
            " AND name > ? ORDER BY name LIMIT ?",
            (prefix, prefix + NAME_CEILING, after, limit),
        )
        return [Counter(r[0], r[1], r[2]) for r in rows]

    async def get_record(self, record_id: str) -> Record | None:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id = ?", (record_id,)
        )
        return decode_record(rows[0]) if rows else None

    async def list_records(self, prefix: str, after: str, limit: int) -> list[Record]:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id >= ? AND id < ?"
            " AND id > ? ORDER BY id LIMIT ?",
            (prefix, prefix + NAME_CEILING, after, limit),
        )
        return [decode_record(r) for r in rows]

    async def feed(self) -> tuple[int, int]:
        sql = f"SELECT {sqlite_changes.LAST_REVISION}, purged_through FROM change_feed AS f"
        rows = await self._read(sql, ())
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
        query = sqlite_changes.changes_query(since, limit, kind, prefix, resources, inline_max)
        return feed_page(await self._read(*query))

    async def record_versions(
        self, record_id: str, before: int, limit: int, version: int | None = None
    ) -> list[Change]:
        rows = await self._read(*sqlite_changes.versions_query(record_id, before, limit, version))
        return [Change(*row[:6]) for row in rows]

    async def deferred_value(self, change: Change, snapshot: bool = False) -> str | None:
        if snapshot:
            params: tuple[Any, ...] = (change.key, change.version, change.revision)
            rows = await self._read(sqlite_changes.SNAPSHOT_VALUE, params)
        else:
            params = (change.revision, change.kind, change.key)
            rows = await self._read(sqlite_changes.CHANGE_VALUE, params)
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
        query = sqlite_changes.snapshot_query(kind, prefix, resources, inline_max, after, limit)
        rows = await self._read(*query)
        return snapshot_page(rows, resources, now_iso())

    async def purge_changes(self, cutoff: str, limit: int) -> int:
        deleted: int = await self._write(purge_changes_unit(cutoff, limit))
        return deleted

    async def wait_for_change(self, mark: int) -> int:
        # PRAGMA data_version on the reader changes whenever any connection other than the
        # reader commits (this worker's writer included); it reads the WAL index and touches
        # no table. Polled only while somebody waits here.
        while True:
            rows = await self._read("PRAGMA data_version", ())
            version: int = rows[0][0]
            if version != mark:
                return version
            await asyncio.sleep(self._poll_interval)

    async def ping(self) -> None:
        # Reads the schema from the file itself; "SELECT 1" would not touch the database.
        await self._read("SELECT count(*) FROM sqlite_schema", ())
        self._db_file.check()
        # The write path too: an empty transaction through the writer, or at once a 503
        # while an earlier write still waits for a turn that another worker keeps.
        stalled = self._writer.stalled
        if stalled is not None:
            raise StorageUnavailable(stalled)
        await self._writer.submit(probe)

    def write_trouble(self) -> str | None:
        return self._writer.trouble

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            try:
                await self._reader.close()
            finally:
                await self._reader_db.close()
                await self._writer_db.close()
                os.close(self._turn_fd)
