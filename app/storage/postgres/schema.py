"""PostgreSQL schema: the migrations, and applying them exactly once however many instances start.

Every instance runs ``migrate`` at startup. The whole migration runs in one transaction
that first takes a transaction-level advisory lock, so concurrent starters queue behind
the first one and then find nothing left to do. The lock is released by COMMIT or
ROLLBACK (or by the server when the connection dies), never held by a session, so this
works behind PgBouncer in transaction mode.
"""

from __future__ import annotations

import hashlib

import asyncpg

from app.startup import StartupError
from app.storage.postgres import changes as pg_changes
from app.storage.postgres import idempotency as pg_idempotency

# Leases (app.storage.postgres.leases): the row per lock name is never deleted.
_LEASES = [
    'CREATE TABLE locks (name TEXT COLLATE "C" PRIMARY KEY, last_token BIGINT NOT NULL,'
    " token BIGINT, owner TEXT, expires_at DOUBLE PRECISION, ttl DOUBLE PRECISION,"
    " claim_by DOUBLE PRECISION, waiter BIGINT)",
    "CREATE INDEX locks_expiry ON locks (expires_at) WHERE token IS NOT NULL",
    'CREATE TABLE lock_waiters (seq BIGSERIAL PRIMARY KEY, name TEXT COLLATE "C" NOT NULL,'
    " owner TEXT, ttl DOUBLE PRECISION NOT NULL, alive_until DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX lock_waiters_name ON lock_waiters (name, seq)",
]

# Names sort byte-wise (COLLATE "C"), as in SQLite, so listings page identically on both
# backends and a prefix range stays on the primary-key index whatever the server locale.
MIGRATIONS: list[list[str]] = [
    [
        'CREATE TABLE counters (name TEXT COLLATE "C" PRIMARY KEY, value BIGINT NOT NULL)',
        'CREATE TABLE items (id TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL,'
        " version BIGINT NOT NULL, updated_at TEXT NOT NULL)",
    ],
    pg_idempotency.MIGRATION,
    pg_changes.MIGRATION,
    _LEASES,
    pg_changes.ITEM_INDEX_MIGRATION,
]

MIN_SERVER_VERSION = (12, 0)  # unnest of several arrays, ON CONFLICT, stable since long before


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``, the same on every host."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


MIGRATION_LOCK = lock_key("lockstep:migrate")


async def migrate(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> int:
    """Bring the schema up to date; returns the schema version now in force."""
    version = conn.get_server_version()
    if (version.major, version.minor) < MIN_SERVER_VERSION:
        raise StartupError(
            f"lockstep needs PostgreSQL >= 12; the server runs {version.major}: upgrade it"
        )
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS lockstep_migrations (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM lockstep_migrations")
        if done > len(MIGRATIONS):
            raise StartupError(
                f"the database schema is at version {done}, newer than this lockstep's"
                f" ({len(MIGRATIONS)}); run the lockstep that wrote it, or restore a backup"
            )
        for number in range(done, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO lockstep_migrations (version) VALUES ($1)", number + 1)
    return len(MIGRATIONS)
