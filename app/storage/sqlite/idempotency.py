"""Idempotency-Key rows in SQLite: looked up, stored and purged inside the write transaction.

The rules (which ops replay, which apply, what is stored) live in ``app.idempotency`` and
are the same for every backend; here are the table's statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from app.clock import KeyTimes
from app.idempotency import (
    Claimable,
    Rendered,
    Stored,
    claimed_keys,
    merge,
    to_store,
    triage,
)
from app.storage.sqlite.changes import Pending

Op = TypeVar("Op", bound=Claimable)


def load_keys(conn: sqlite3.Connection, keys: list[str], now: float) -> dict[str, Stored]:
    marks = ",".join("?" * len(keys))
    rows = conn.execute(
        f"SELECT key, fingerprint, status, headers, body FROM idempotency"
        f" WHERE key IN ({marks}) AND expires_at > ?",
        (*keys, now),
    ).fetchall()
    return {
        key: Stored(fp, Rendered(status, msgspec.json.decode(headers), bytes(body)))
        for key, fp, status, headers, body in rows
    }


def with_claims(
    conn: sqlite3.Connection,
    ops: list[Op],
    apply: Callable[[list[Op]], list[Any]],
    times: KeyTimes,
) -> list[Any]:
    """Apply ``ops``; ops whose Idempotency-Key is stored replay instead (see app.idempotency)."""
    keys = claimed_keys(ops)
    if not keys:
        return apply(ops)  # the usual path: no claim, no extra statement
    run, settled = triage(ops, load_keys(conn, keys, times.now))
    outcomes = apply([ops[i] for i in run]) if run else []
    conn.executemany(
        # An expired row may still be there (not purged yet): the new request replaces it.
        "INSERT INTO idempotency (key, fingerprint, status, headers, body, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
        " fingerprint = excluded.fingerprint, status = excluded.status,"
        " headers = excluded.headers, body = excluded.body, expires_at = excluded.expires_at",
        [
            (
                row.key,
                row.fingerprint,
                row.response.status,
                msgspec.json.encode(dict(row.response.headers)).decode(),
                row.response.body,
                times.expires_at,
            )
            for row in to_store(ops, run, outcomes)
        ],
    )
    return merge(len(ops), run, outcomes, settled)


def purge_unit(now: float, limit: int) -> Callable[[sqlite3.Connection, Pending], int]:
    def unit(conn: sqlite3.Connection, pending: Pending) -> int:
        cursor = conn.execute(
            "DELETE FROM idempotency WHERE key IN"
            " (SELECT key FROM idempotency WHERE expires_at <= ? LIMIT ?)",
            (now, limit),
        )
        return cursor.rowcount

    return unit
