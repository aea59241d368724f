"""Export from and import into a PostgreSQL database, while instances may be serving it.

An export reads in one ``REPEATABLE READ`` read-only transaction (one committed state,
streamed through a cursor); an import locks both tables against writers, checks that the
database is empty, and writes everything in one transaction. Backups of a PostgreSQL
database are ``pg_dump``'s job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import asyncpg

from app.export_format import (
    Row,
    TargetNotEmpty,
    counter_line,
    end_line,
    header_line,
    in_batches,
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
            async for item_id, value, version, updated_at in conn.cursor(
                "SELECT id, value, version, updated_at FROM items ORDER BY id", prefetch=BATCH
            ):
                records += 1
                yield record_line(item_id, value, version, updated_at)
    finally:
        await conn.close()
    yield end_line(counters, records)


async def import_rows(settings: Settings, rows: Iterable[Row]) -> tuple[int, int]:
    """Load ``rows`` into the empty database in one transaction; returns the counts.

    The schema must exist already (``app.storage.open_storage`` creates it). Raises
    ``TargetNotEmpty`` and writes nothing if the database holds any row; an exception
    from ``rows`` rolls everything back.
    """
    conn = await _connect(settings)
    try:
        async with conn.transaction():
            # Instances writing meanwhile wait for the commit instead of slipping rows in.
            await conn.execute("LOCK TABLE counters, items, idempotency IN EXCLUSIVE MODE")
            held = [
                table
                for table in ("counters", "items", "idempotency")
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")
            ]
            if held:
                raise TargetNotEmpty(held)
            return await _insert_all(conn, rows)
    finally:
        await conn.close()


async def _insert_all(conn: asyncpg.Connection, rows: Iterable[Row]) -> tuple[int, int]:
    total_counters = total_records = 0
    for counters, records in in_batches(rows, BATCH):
        if counters:
            await conn.executemany(
                "INSERT INTO counters (name, value, version) VALUES ($1, $2, $3)", counters
            )
        if records:
            await conn.executemany(
                "INSERT INTO items (id, value, version, updated_at) VALUES ($1, $2, $3, $4)",
                records,
            )
        total_counters += len(counters)
        total_records += len(records)
    return total_counters, total_records
