"""Cancellation and failure inside a write transaction leave nothing behind."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import app.storage.sqlite.transaction as sqlite_transaction
from app.domain import Increment
from app.errors import StorageUnavailable
from app.settings import Settings
from app.storage.sqlite import SQLiteStorage
from app.storage.sqlite.changes import Pending
from tests.outcomes import values
from tests.storage.connections import WrappedConnection

pytestmark = pytest.mark.backends("sqlite")


def committed(path: Path, name: str) -> int | None:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return None if row is None else int(row[0])


async def test_cancelled_requests_cannot_interrupt_their_batch(
    settings: Settings, storage: SQLiteStorage
) -> None:
    """Requests cancelled while their batch runs leave it whole: committed once, connection free.

    Protection: the writer runs a whole batch in one call on the connection's thread, which
    cancellation cannot enter; a batch run statement by statement from the event loop would
    stop between statements and leave the transaction open (in_transaction, next write fails).
    """
    inside = threading.Event()
    release = threading.Event()

    def hold(conn: sqlite3.Connection, pending: Pending) -> None:
        inside.set()
        release.wait(10)

    requests = [
        asyncio.ensure_future(storage.apply_counter_ops(f"c{i}", [Increment(1)])) for i in range(5)
    ]
    blocker = storage._writer.submit(hold)  # last in the same batch
    await asyncio.to_thread(inside.wait, 10)
    for request in requests:
        request.cancel()
    await asyncio.sleep(0)
    release.set()
    await blocker
    assert all(r.cancelled() for r in requests)
    assert [committed(settings.sqlite_path, f"c{i}") for i in range(5)] == [1] * 5
    assert not storage._writer_db._conn.in_transaction
    assert values(await storage.apply_counter_ops("c0", [Increment(1)])) == [2]
    other = await SQLiteStorage.open(settings)  # another worker can still write
    try:
        assert values(await other.apply_counter_ops("c0", [Increment(1)])) == [3]
    finally:
        await other.close()


class _FailingCommit(WrappedConnection):
    """A connection whose next COMMIT fails as a full disk would make it fail."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)


async def test_failed_commit_rolls_back_and_no_later_commit_carries_it(
    settings: Settings, storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose COMMIT fails answers 503, is rolled back, and the next batch commits alone.

    Protection: the ROLLBACK in _run_transaction; without it the transaction stays open, the
    next BEGIN fails, and the failed batch's writes would ride along with a later COMMIT.
    """
    original = sqlite_transaction.run_transaction

    def failing(conn: sqlite3.Connection, units: Any) -> Any:
        return original(_FailingCommit(conn), units)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_transaction, "run_transaction", failing)
    with pytest.raises(StorageUnavailable, match="disk is full"):
        await storage.apply_counter_ops("lost", [Increment(7)])
    monkeypatch.undo()
    assert not storage._writer_db._conn.in_transaction
    assert values(await storage.apply_counter_ops("kept", [Increment(1)])) == [1]
    assert committed(settings.sqlite_path, "lost") is None
    assert committed(settings.sqlite_path, "kept") == 1
