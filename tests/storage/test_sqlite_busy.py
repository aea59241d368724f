"""Waiting for another process's write lock: prompt once it is free, 503 past the busy timeout."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
from pathlib import Path

import pytest

from app.domain import Increment
from app.errors import StorageUnavailable
from app.storage.sqlite import SQLiteStorage
from tests.conftest import settings_for


class ForeignWriter:
    """Another process's connection holding the database's write lock until released."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")
        self.released_at = 0.0

    def release_after(self, seconds: float) -> threading.Timer:
        def release() -> None:
            self.conn.execute("COMMIT")
            self.released_at = time.monotonic()
            self.conn.close()

        timer = threading.Timer(seconds, release)
        timer.start()
        return timer


async def test_write_waits_for_foreign_lock_then_commits_promptly(tmp_path: Path) -> None:
    """A batch blocked by another process commits within milliseconds of the lock's release."""
    settings = settings_for(tmp_path)
    storage = await SQLiteStorage.open(settings)
    try:
        delays = []
        for round_no in range(1, 4):
            foreign = ForeignWriter(settings.sqlite_path)
            timer = foreign.release_after(0.6)  # long enough for SQLite's own 100 ms sleeps
            assert await storage.apply_counter_ops("c", [Increment(1)]) == [round_no]
            delays.append(time.monotonic() - foreign.released_at)
            await asyncio.to_thread(timer.join)
        assert await storage.get_counter("c") == 3
        assert statistics.median(delays) < 0.025, delays
    finally:
        await storage.close()


async def test_write_fails_503_when_foreign_lock_outlasts_busy_timeout(tmp_path: Path) -> None:
    """Past the busy timeout the batch fails with StorageUnavailable and writes nothing."""
    settings = settings_for(tmp_path, busy_timeout_ms=200)
    storage = await SQLiteStorage.open(settings)
    try:
        foreign = ForeignWriter(settings.sqlite_path)
        timer = foreign.release_after(1.0)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await storage.apply_counter_ops("c", [Increment(1)])
        assert 0.2 <= time.monotonic() - started < 0.9
        await asyncio.to_thread(timer.join)
        assert await storage.get_counter("c") is None
        assert await storage.apply_counter_ops("c", [Increment(1)]) == [1]
    finally:
        await storage.close()
