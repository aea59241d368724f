"""The two private aiosqlite names ``in_db_thread`` relies on still behave as it needs.

aiosqlite has no public call that runs a function on a connection's thread; lockstep
uses ``Connection._execute`` and ``Connection._conn`` in ``in_db_thread`` only. These
tests fail first if an aiosqlite release changes either.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import aiosqlite
import pytest

from app.storage.sqlite.connection import in_db_thread


async def test_in_db_thread_runs_on_the_connection_thread_with_its_connection(
    tmp_path: Path,
) -> None:
    """The function runs where aiosqlite's public calls run, on the same sqlite3 connection."""
    db = await aiosqlite.connect(tmp_path / "pin.db", isolation_level=None)
    try:
        await db.create_function("thread_id", 0, threading.get_ident)
        rows = list(await db.execute_fetchall("SELECT thread_id()"))
        assert await in_db_thread(db, lambda conn: threading.get_ident()) == rows[0][0]
        assert threading.get_ident() != rows[0][0]

        def make_temp_table(conn: sqlite3.Connection, name: str) -> bool:
            conn.execute(f"CREATE TEMP TABLE {name} (x)")  # visible to this connection only
            return isinstance(conn, sqlite3.Connection)

        assert await in_db_thread(db, make_temp_table, "pinned")
        assert list(await db.execute_fetchall("SELECT count(*) FROM pinned")) == [(0,)]
    finally:
        await db.close()


async def test_in_db_thread_raises_the_function_error_then_value_error_once_closed(
    tmp_path: Path,
) -> None:
    """The function's error reaches the caller; after close, ValueError (a 503 in storage)."""
    db = await aiosqlite.connect(tmp_path / "pin.db", isolation_level=None)
    try:
        with pytest.raises(ZeroDivisionError):
            await in_db_thread(db, lambda conn: 1 // 0)
        assert await in_db_thread(db, lambda conn, n: n + 1, 41) == 42
    finally:
        await db.close()
    with pytest.raises(ValueError):
        await in_db_thread(db, lambda conn: None)
