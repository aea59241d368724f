"""Leases in SQLite: the tables, one step as a unit of the writer's transaction, the reads.

A step reads the lock's row and its waiters inside the writer's ``BEGIN IMMEDIATE``, takes
"now" from the service clock there (``app.clock``: a step of the wall clock never makes a
lease end early), lets ``app.leases`` decide, and writes back the row, the waiters and
the change-log entry, all in that transaction. The row is never deleted, so fencing
tokens keep increasing across restarts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from app.changes import Change
from app.leases import (
    LOCK_COLUMNS,
    WAITER_COLUMNS,
    Decision,
    Fence,
    LockState,
    Queued,
    Step,
    decide,
    fence_holds,
    lock_row,
    read_state,
)
from app.storage.sqlite.changes import Pending
from app.storage.sqlite.writes import UnitFn

MIGRATION = [
    "CREATE TABLE locks (name TEXT PRIMARY KEY, last_token INTEGER NOT NULL, token INTEGER,"
    " owner TEXT, expires_at REAL, ttl REAL, claim_by REAL, waiter INTEGER) WITHOUT ROWID",
    "CREATE INDEX locks_expiry ON locks (expires_at) WHERE token IS NOT NULL",
    # AUTOINCREMENT: a seq is never used twice, so a dead waiter's is never another's.
    "CREATE TABLE lock_waiters (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,"
    " owner TEXT, ttl REAL NOT NULL, alive_until REAL NOT NULL)",
    "CREATE INDEX lock_waiters_name ON lock_waiters (name, seq)",
]

SELECT_LOCK = f"SELECT {LOCK_COLUMNS} FROM locks WHERE name = ?"
SELECT_WAITERS = f"SELECT {WAITER_COLUMNS} FROM lock_waiters WHERE name = ? ORDER BY seq"
_UPSERT_LOCK = (
    f"INSERT INTO locks (name, {LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET last_token = excluded.last_token,"
    " token = excluded.token, owner = excluded.owner, expires_at = excluded.expires_at,"
    " ttl = excluded.ttl, claim_by = excluded.claim_by, waiter = excluded.waiter"
)
# Held (unexpired) leases; the service clock's now is the parameter.
HELD = "token IS NOT NULL AND expires_at > ? AND (claim_by IS NULL OR claim_by > ?)"
LIST_LOCKS = (
    "SELECT name, token, owner, expires_at FROM locks WHERE name >= ? AND name < ?"
    f" AND name > ? AND {HELD} ORDER BY name LIMIT ?"
)
ENDED = (
    "SELECT name FROM locks WHERE token IS NOT NULL AND (expires_at <= ? OR claim_by <= ?)"
    " ORDER BY expires_at LIMIT ?"
)


def read(conn: sqlite3.Connection, name: str) -> LockState:
    return read_state(
        name,
        conn.execute(SELECT_LOCK, (name,)).fetchone(),
        conn.execute(SELECT_WAITERS, (name,)).fetchall(),
    )


def apply_step(
    conn: sqlite3.Connection, pending: Pending, name: str, step: Step, now: float
) -> Decision:
    """Decide ``step`` on the lock as read here and write what it changed."""
    before = read(conn, name)
    decision = decide(before, step, now)
    after = decision.after
    if after.holder != before.holder or after.last_token != before.last_token:
        conn.execute(_UPSERT_LOCK, lock_row(after))
    if decision.removed:
        conn.executemany("DELETE FROM lock_waiters WHERE seq = ?", [(s,) for s in decision.removed])
    if decision.refreshed:
        conn.executemany(
            "UPDATE lock_waiters SET alive_until = ? WHERE seq = ?",
            [(alive, seq) for seq, alive in decision.refreshed.items()],
        )
    waiter = decision.enqueue
    if waiter is not None:
        (seq,) = conn.execute(
            "INSERT INTO lock_waiters (name, owner, ttl, alive_until) VALUES (?, ?, ?, ?)"
            " RETURNING seq",
            (name, waiter.owner, waiter.ttl, waiter.alive_until),
        ).fetchone()
        decision.outcome = Queued(seq, after.holder)
    commit = pending.commit
    if decision.entry is not None:
        value = msgspec.json.encode(decision.entry).decode()
        token = decision.entry["token"]
        pending.entries.append(Change(commit.revision, "lock", name, value, token, commit.time))
    decision.revision = commit.revision if decision.entry is not None else commit.revision - 1
    return decision


def step_unit(name: str, step: Step, now: Callable[[], float]) -> UnitFn:
    """The writer's unit for one step; ``now`` is read inside the write transaction."""

    def unit(conn: sqlite3.Connection, pending: Pending) -> Any:
        return apply_step(conn, pending, name, step, now())

    return unit


def stale_fence(conn: sqlite3.Connection, fences: Sequence[Fence], now: float) -> Fence | None:
    """The first of ``fences`` whose lock is not held by its token, or None."""
    for fence in sorted(fences):
        if not fence_holds(read(conn, fence.name), fence.token, now):
            return fence
    return None
