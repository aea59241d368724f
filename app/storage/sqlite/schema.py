"""The SQLite schema and connection settings: migrations, durability pragmas, startup.

Every worker runs ``start_up`` on its writer connection while holding the writer turn, so
workers starting together on a new file switch it to WAL and migrate it exactly once. A
database file that cannot be used (a newer schema, not a database, damaged) stops the
start with one line saying what to do (``refusal``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3

from app.settings import Settings
from app.startup import StartupError
from app.storage.sqlite import changes as sqlite_changes
from app.storage.sqlite import leases as sqlite_leases

MIN_SQLITE = (3, 35, 0)  # RETURNING, and the UPSERT forms used here

# Schema versions, applied in order; PRAGMA user_version records how many have run.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE items (id TEXT PRIMARY KEY, value TEXT NOT NULL,"
        " version INTEGER NOT NULL, updated_at TEXT NOT NULL) WITHOUT ROWID",
    ],
    [
        # One row per Idempotency-Key: the request's fingerprint and its complete response,
        # inserted in the same transaction as the change it answers.
        "CREATE TABLE idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
        " status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,"
        " expires_at REAL NOT NULL)",
        "CREATE INDEX idempotency_expiry ON idempotency (expires_at)",
    ],
    sqlite_changes.MIGRATION,
    sqlite_leases.MIGRATION,
    sqlite_changes.ITEM_INDEX_MIGRATION,
    sqlite_changes.DERIVED_REVISION_MIGRATION,
    sqlite_changes.HISTORY_CHAIN_MIGRATION,
]


def prepare(
    conn: sqlite3.Connection, busy_timeout_ms: int, synchronous: str, wal_limit: int = 0
) -> None:
    # busy_timeout first: every later statement may meet another worker's lock.
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # After a checkpoint resets the WAL, SQLite cuts the file back to this size.
    conn.execute(f"PRAGMA journal_size_limit = {int(wal_limit) if wal_limit else -1}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"SQLite refused WAL mode (journal_mode={mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    if level != {"NORMAL": 1, "FULL": 2}[synchronous]:
        raise RuntimeError(f"SQLite refused synchronous={synchronous} (got {level})")


def start_up(
    conn: sqlite3.Connection,
    busy_timeout_ms: int,
    synchronous: str,
    turn_fd: int,
    wal_limit: int = 0,
) -> None:
    """Set pragmas and migrate while holding the writer turn.

    Workers starting together on a new file would otherwise race to switch it to WAL,
    which SQLite may refuse with "database is locked" without waiting out busy_timeout.
    """
    no_wakeup_preemption()
    fcntl.flock(turn_fd, fcntl.LOCK_EX)
    try:
        prepare(conn, busy_timeout_ms, synchronous, wal_limit)
        migrate(conn)
    finally:
        fcntl.flock(turn_fd, fcntl.LOCK_UN)


def no_wakeup_preemption() -> None:
    """Make the calling thread (the writer's) ``SCHED_BATCH`` on Linux; elsewhere do nothing.

    The writer thread wakes several times per commit: for the batch, after each GIL
    hand-off, after ``fdatasync``. An ordinary thread's wake-up may preempt the worker's
    event loop on the spot; a ``SCHED_BATCH`` thread keeps its fair share of the CPU but
    runs when the loop blocks or its time slice ends (figures in docs/design.md).
    """
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date under the write lock, so concurrent workers migrate once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise NewerSchema(version)
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


class NewerSchema(Exception):
    """The database was migrated by a newer lockstep; ``args[0]`` is its schema version."""


def refusal(settings: Settings, e: BaseException) -> StartupError | None:
    """What to tell the operator when the database file itself is unusable, or None."""
    path = settings.sqlite_path.absolute()
    if isinstance(e, NewerSchema):
        return StartupError(
            f"{path} has schema version {e.args[0]}, newer than this lockstep's"
            f" ({len(MIGRATIONS)}); run the lockstep that wrote it, or restore a backup"
        )
    code = getattr(e, "sqlite_errorcode", None) if isinstance(e, sqlite3.DatabaseError) else None
    code = None if code is None else code & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_NOTADB:
        elsewhere = (
            "set LOCKSTEP_DATABASE_URL to lockstep's database"
            if settings.database_url
            else "set LOCKSTEP_DATA_DIR to the directory of lockstep's database"
        )
        return StartupError(
            f"{path} is not a SQLite database; restore it from a backup"
            f" or move it away to start empty, or {elsewhere}"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return StartupError(
            f"{path} is damaged ({e}); restore it from a backup"
            f" (sqlite3 {path} .recover may save what is left)"
        )
    return None
