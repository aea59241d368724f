"""Idempotency-Key rows in PostgreSQL: read, written and purged inside lockstep's transactions.

The rules (which ops replay, which apply, what is stored) live in ``app.idempotency`` and
are the same for every backend. Here: the table's statements. A batch also takes a
transaction-level advisory lock per claimed key (beside its resources' locks), so two
hosts handed the same key at once never both apply: the second waits, then finds the
first one's row and replays it (or answers 422 for a different request).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from app.idempotency import NewKey, Rendered, Stored

Connection = asyncpg.pool.PoolConnectionProxy

MIGRATION = [
    'CREATE TABLE idempotency (key TEXT COLLATE "C" PRIMARY KEY, fingerprint TEXT NOT NULL,'
    " status INTEGER NOT NULL, headers TEXT NOT NULL, body BYTEA NOT NULL,"
    " expires_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX idempotency_expiry ON idempotency (expires_at)",
]


async def load_keys(conn: Connection, keys: Sequence[str], now: float) -> dict[str, Stored]:
    """The unexpired stored rows of ``keys``."""
    rows = await conn.fetch(
        "SELECT key, fingerprint, status, headers, body FROM idempotency"
        " WHERE key = ANY($1::text[]) AND expires_at > $2",
        list(keys),
        now,
    )
    return {
        r[0]: Stored(r[1], Rendered(r[2], msgspec.json.decode(r[3]), bytes(r[4]))) for r in rows
    }


async def store_keys(conn: Connection, rows: Sequence[NewKey], expires_at: float) -> None:
    """Insert the responses of applied claimed ops (replacing expired, unpurged rows)."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO idempotency (key, fingerprint, status, headers, body, expires_at)"
        " SELECT k, f, s, h, b, $6 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],"
        " $5::bytea[]) AS r(k, f, s, h, b)"
        " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " status = excluded.status, headers = excluded.headers, body = excluded.body,"
        " expires_at = excluded.expires_at",
        [r.key for r in rows],
        [r.fingerprint for r in rows],
        [r.response.status for r in rows],
        [msgspec.json.encode(dict(r.response.headers)).decode() for r in rows],
        [r.response.body for r in rows],
        expires_at,
    )


async def purge(conn: Connection, now: float, limit: int) -> int:
    """Delete up to ``limit`` expired rows in one autocommit statement; returns how many."""
    status = await conn.execute(
        "DELETE FROM idempotency WHERE key IN"
        " (SELECT key FROM idempotency WHERE expires_at <= $1 LIMIT $2)",
        now,
        limit,
    )
    return int(status.split()[-1])
