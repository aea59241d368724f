"""SQLite databases as an older lockstep left them, for the migration tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from app.settings import Settings
from app.storage.sqlite.schema import MIGRATIONS


@contextmanager
def database_at(settings: Settings, version: int) -> Iterator[sqlite3.Connection]:
    """The database made by the first ``version`` migrations, open for the test to fill in.

    Committed, closed and marked at that version when the block ends.
    """
    path = settings.sqlite_path
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    try:
        for statement in [s for migration in MIGRATIONS[:version] for s in migration]:
            conn.execute(statement)
        yield conn
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()
