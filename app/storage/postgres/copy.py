"""Export from and import into a PostgreSQL database, while instances may be serving it.

An export reads in one ``REPEATABLE READ`` read-only transaction (one committed state,
streamed through a cursor); an import locks the tables against writers, checks that the
database is empty, and writes everything in one transaction. Backups of a PostgreSQL
database are ``pg_dump``'s job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import asyncpg

from app.export_format import (
    TABLES,
    Row,
    TargetNotEmpty,
    counter_line,
    end_line,
    header_line,
    in_batches,
    lock_line,
    record_line,
)
from app.settings import Settings

BATCH = 1000  # rows per executemany


async def _connect(settings: Settings) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        settings.database_url,
        timeout=settings.pg_connect_timeout,
        server_settings={"application_name": "lockstep-cli"},
    )
    return conn


async def export_lines(settings: Settings) -> AsyncIterator[bytes]:
    """The database as export lines (``app.export_format``), streamed."""
    conn = await _connect(settings)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            yield header_line()
            counters = records = 0
            async for name, value, counter_version in conn.cursor(
                "SELECT name, value, version FROM counters ORDER BY name", prefetch=BATCH
            ):
                counters += 1
                yield counter_line(name, value, counter_version)
            async for record_id, value, version, updated_at in conn.cursor(
                "SELECT id, value, version, updated_at FROM items ORDER BY id", prefetch=BATCH
            ):
                records += 1
                yield record_line(record_id, value, version, updated_at)
            locks = 0
            async for name, last_token in conn.cursor(
                "SELECT name, last_token FROM locks ORDER BY name", prefetch=BATCH
            ):
                locks += 1
                yield lock_line(name, last_token)
    finally:
        await conn.close()
    yield end_line(counters, records, locks)


async def import_rows(settings: Settings, rows: Iterable[Row]) -> tuple[int, int, int]:
    """Load ``rows`` into the empty database in one transaction; returns the counts.

    The schema must exist already (``app.storage.open_storage`` creates it). Raises
    ``TargetNotEmpty`` and writes nothing if the database holds any row; an exception
    from ``rows`` rolls everything back.
    """
    conn = await _connect(settings)
    try:
        async with conn.transaction():
            # Instances writing meanwhile wait for the commit instead of slipping rows in.
            await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
            held = [
                table
                for table in TABLES
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")
            ]
            if held:
                raise TargetNotEmpty(held)
            return await _insert_all(conn, rows)
    finally:
        await conn.close()


async def _insert_all(conn: asyncpg.Connection, rows: Iterable[Row]) -> tuple[int, int, int]:
    total_counters = total_records = total_locks = 0
    for batch in in_batches(rows, BATCH):
        if batch.counters:
            await conn.executemany(
                "INSERT INTO counters (name, value, version) VALUES ($1, $2, $3)", batch.counters
            )
        if batch.records:
            await conn.executemany(
                "INSERT INTO items (id, value, version, updated_at) VALUES ($1, $2, $3, $4)",
                batch.records,
            )
        if batch.locks:
            await conn.executemany(
                "INSERT INTO locks (name, last_token) VALUES ($1, $2)", batch.locks
            )
        total_counters += len(batch.counters)
        total_records += len(batch.records)
        total_locks += len(batch.locks)
    return total_counters, total_records, total_locks
