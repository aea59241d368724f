"""The aiosqlite connections: running a function on a connection's thread, and its errors.

Every statement lockstep sends to SQLite runs inside a function handed to the connection's
own thread in one hop (``in_db_thread``), so a whole batch costs one hop and the event loop
can never interleave a foreign statement. SQLite's failures become 503s and a bounded set
of metric kinds here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

from app.errors import StorageUnavailable

T = TypeVar("T")


def translate(e: BaseException) -> BaseException:
    """Map every SQLite failure (locked, read-only, full, I/O, not a database ...) to a 503."""
    if isinstance(e, sqlite3.Error):
        error = StorageUnavailable(f"database: {e}")
        error.__cause__ = e
        return error
    return e


KINDS = {
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_READONLY: "readonly",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_IOERR: "io",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}


def error_kind(e: BaseException) -> str | None:
    """The bounded metric kind of a database error, or None for anything else."""
    if not isinstance(e, sqlite3.Error):
        return None
    code = getattr(e, "sqlite_errorcode", None)
    # Extended result codes carry the primary code in their low byte.
    return KINDS.get(code & 0xFF, "other") if code is not None else "other"


async def in_db_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(raw_connection, *args)`` on the connection's own thread in one hop.

    aiosqlite hops threads once per call; a whole batch runs here as one function, so
    it costs one hop and the event loop can never interleave a foreign statement.
    aiosqlite (0.22) has no public call that runs a function on its thread, so this uses
    its queueing primitive ``_execute`` (unchanged since 0.17) and the raw ``_conn``, here
    only. ``tests/storage/test_aiosqlite.py`` pins both; pyproject pins aiosqlite ~=0.22.
    """
    result: T = await db._execute(lambda: fn(db._conn, *args))  # type: ignore[no-untyped-call]
    return result
