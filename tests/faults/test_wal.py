"""Bounded WAL under continuous writes with a long-lived reader, against real gunicorn."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults.load import Tally, json_or_none, run_load
from tests.support import Service

pytestmark = pytest.mark.slow

LIMIT = 256 * 1024
VALUE = {"value": "v" * 4000}


@pytest.mark.parametrize("policy", [True, False], ids=["checkpoint-policy", "no-policy"])
async def test_wal_returns_below_limit_after_long_reader_leaves(
    tmp_path: Path, policy: bool
) -> None:
    """A reader pins the WAL while it grows; once it leaves, continued writes shrink it again.

    Protection: the writer's TRUNCATE checkpoint once the WAL passes LOCKSTEP_WAL_SIZE_LIMIT
    (with journal_size_limit). The paired "no-policy" case (limit 0) shows the WAL file
    stays at its high-water mark without it.
    """
    data = tmp_path / "data"
    wal = data / "lockstep.db-wal"
    env = {"LOCKSTEP_WAL_SIZE_LIMIT": str(LIMIT if policy else 0)}

    async def put(http: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
        async with http.put(f"{service.url}/items/r{i % 50}", json=VALUE) as r:
            return r.status, await json_or_none(r)

    with Service(data, workers=2, env=env) as service:
        reader = sqlite3.connect(data / "lockstep.db", isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM items").fetchone()  # holds its snapshot
            tally = await run_load(put, 600, 10, Tally())
            assert tally.statuses() == {200: 550, 201: 50}
            pinned = wal.stat().st_size
            assert pinned > 4 * LIMIT  # the reader kept the WAL from being reset
        finally:
            reader.execute("COMMIT")
            reader.close()
        sizes = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tally = await run_load(put, 100, 10, Tally())
            assert set(tally.statuses()) == {200}
            sizes.append(wal.stat().st_size)
            if policy and sizes[-1] <= LIMIT:
                break
            if not policy and len(sizes) >= 5:
                break
            await asyncio.sleep(0.1)
    if policy:
        assert sizes[-1] <= LIMIT, sizes
    else:
        assert min(sizes) >= pinned, sizes
