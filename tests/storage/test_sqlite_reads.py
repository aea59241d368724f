"""Batched reads: concurrent reads share thread hops, each still answered on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from app.domain import Counter, Increment
from app.storage.sqlite import SQLiteStorage
from tests.conftest import settings_for
from tests.outcomes import values

pytestmark = pytest.mark.backends("sqlite")


async def test_concurrent_reads_share_thread_hops(storage: SQLiteStorage) -> None:
    """100 concurrent reads of different counters each get their own value in a few hops."""
    await asyncio.gather(*(storage.apply_counter_ops(f"c{i}", [Increment(i)]) for i in range(100)))
    before = storage._reader.hops
    counters = await asyncio.gather(*(storage.get_counter(f"c{i}") for i in range(100)))
    assert [c.value if c else None for c in counters] == list(range(100))
    assert storage._reader.hops - before <= 3


async def test_failing_read_fails_only_itself(storage: SQLiteStorage) -> None:
    """A query that fails in a batch raises for its caller alone; its batch-mates are answered."""
    await storage.apply_counter_ops("c", [Increment(7)])
    reader = storage._reader
    before = reader.hops
    sql = "SELECT value FROM counters WHERE name = ?"
    good = reader.fetch(sql, ("c",))
    bad = reader.fetch("SELECT no_such_column FROM counters", ())
    also_good = reader.fetch(sql, ("c",))
    results = await asyncio.gather(good, bad, also_good, return_exceptions=True)
    assert results[0] == [(7,)]
    assert isinstance(results[1], sqlite3.OperationalError)
    assert results[2] == [(7,)]
    assert reader.hops - before == 1


async def test_read_after_commit_sees_the_write(storage: SQLiteStorage) -> None:
    """A read sent after a write has been acknowledged returns the committed value."""
    for expected in range(1, 20):
        assert values(await storage.apply_counter_ops("c", [Increment(1)])) == [expected]
        assert await storage.get_counter("c") == Counter("c", expected, expected)


async def test_close_answers_queued_reads(tmp_path: Path) -> None:
    """Reads queued when the storage closes are still answered, not left hanging."""
    storage = await SQLiteStorage.open(settings_for(tmp_path))
    await storage.apply_counter_ops("c", [Increment(3)])
    pending = [asyncio.ensure_future(storage.get_counter("c")) for _ in range(10)]
    await asyncio.sleep(0)
    await storage.close()
    assert await asyncio.gather(*pending) == [Counter("c", 3, 1)] * 10
