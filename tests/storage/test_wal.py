"""The SQLite backend's durability pragmas and WAL checkpoint policy, in one process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest

from app.domain import PutRecord
from app.storage.sqlite import SQLiteStorage
from tests.conftest import settings_for


@pytest.mark.parametrize(("level", "number"), [("FULL", 2), ("NORMAL", 1)])
async def test_open_applies_synchronous_and_wal_limit(
    tmp_path: Path, level: Literal["FULL", "NORMAL"], number: int
) -> None:
    """The writer connection runs in WAL mode at the configured synchronous level and limit."""
    storage = await SQLiteStorage.open(
        settings_for(tmp_path, synchronous=level, wal_size_limit=123456)
    )
    try:
        pragmas = [
            next(iter(await storage._writer_db.execute_fetchall(f"PRAGMA {name}")))[0]
            for name in ("journal_mode", "synchronous", "journal_size_limit")
        ]
        assert pragmas == ["wal", number, 123456]
    finally:
        await storage.close()


@pytest.mark.parametrize("limit", [64 * 1024, 0], ids=["policy", "no-policy"])
async def test_writer_truncates_wal_past_its_limit(tmp_path: Path, limit: int) -> None:
    """Past the limit the writer checkpoints and truncates the WAL; with limit 0 it never does."""
    settings = settings_for(tmp_path, wal_size_limit=limit)
    storage = await SQLiteStorage.open(settings)
    try:
        for i in range(200):
            await storage.apply_record_ops(f"r{i}", [PutRecord("x" * 2000)])
        # A write's answer comes before the writer's check of the WAL after its batch; an
        # empty batch through the writer (it adds no page) runs after that check is done.
        await storage.ping()
        wal = os.stat(f"{settings.sqlite_path}-wal").st_size
    finally:
        await storage.close()
    if limit:
        assert storage.checkpoints > 0
        assert wal <= limit
    else:
        assert storage.checkpoints == 0
        assert wal > 64 * 1024
