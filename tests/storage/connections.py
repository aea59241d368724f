"""A stand-in for the writer's ``sqlite3.Connection`` that a test can make misbehave."""

from __future__ import annotations

import sqlite3
from typing import Any


class WrappedConnection:
    """Passes to ``conn`` whatever ``_run_transaction`` uses; subclasses change a call."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return self._conn.executemany(sql, *args)
