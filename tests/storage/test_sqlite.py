"""The SQLite backend: durability settings, migrations, group commit, savepoint isolation."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.domain import Increment
from app.errors import StorageUnavailable
from app.settings import Settings
from app.storage.sqlite import MIGRATIONS, SQLiteStorage
from tests.conftest import settings_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[SQLiteStorage]:
    storage = await SQLiteStorage.open(settings)
    yield storage
    await storage.close()


def pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def test_open_creates_schema_in_wal_mode(settings: Settings, storage: SQLiteStorage) -> None:
    """A fresh database is created in WAL mode at the latest schema version."""
    assert settings.sqlite_path.exists()
    assert pragma(settings.sqlite_path, "journal_mode") == "wal"
    assert pragma(settings.sqlite_path, "user_version") == len(MIGRATIONS)


async def test_open_refuses_old_sqlite(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Startup stops with a clear message on SQLite older than 3.35."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(RuntimeError, match=r"SQLite >= 3\.35"):
        await SQLiteStorage.open(settings)


async def test_concurrent_writes_share_one_transaction(storage: SQLiteStorage) -> None:
    """Writes to many resources submitted together are committed in one batch."""
    before = storage.batches
    results = await asyncio.gather(
        *(storage.apply_counter_ops(f"c{i}", [Increment(i)]) for i in range(50))
    )
    assert results == [[i] for i in range(50)]
    assert storage.batches - before <= 2
    assert await storage.list_counters("c", "", 100) == sorted((f"c{i}", i) for i in range(50))


async def test_failing_unit_rolls_back_only_itself(storage: SQLiteStorage) -> None:
    """A unit that fails after writing is rolled back to its savepoint; its batch-mates commit."""

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO counters (name, value) VALUES ('half', 1)")
        raise ValueError("boom")

    good = storage.apply_counter_ops("good", [Increment(1)])
    bad = storage._writer.submit(broken)
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] == [1]
    assert isinstance(results[1], ValueError)
    assert await storage.get_counter("good") == 1
    assert await storage.get_counter("half") is None


async def test_readonly_database_answers_storage_unavailable(
    settings: Settings, storage: SQLiteStorage
) -> None:
    """A write the database refuses maps to StorageUnavailable (503), not a crash."""

    def refuse(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    with pytest.raises(StorageUnavailable):
        await storage._writer.submit(refuse)
    assert await storage.apply_counter_ops("after", [Increment(1)]) == [1]


async def test_ping_fails_cleanly_once_closed(settings: Settings) -> None:
    """ping() reads the database file and reports a closed storage as StorageUnavailable."""
    storage = await SQLiteStorage.open(settings)
    await storage.ping()
    await storage.close()
    with pytest.raises(StorageUnavailable):
        await storage.ping()
