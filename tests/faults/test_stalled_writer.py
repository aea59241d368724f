"""A worker that stops while it holds the write turn: the others answer 503 in bounded time."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import Service

pytestmark = pytest.mark.slow


async def test_held_write_turn_answers_503_within_busy_timeout_and_recovers(
    tmp_path: Path,
) -> None:
    """While another process holds the writer turn and does not let go (as a SIGSTOPped
    worker would), writes answer 503 with Retry-After after LOCKSTEP_BUSY_TIMEOUT_MS, change
    nothing, and /readyz answers 503; once it lets go, writes and readiness come back.

    Protection: the bounded wait for the turn (app.storage.sqlite.turn) and the write probe
    in /readyz. Without the first, every write waits as long as the holder is stopped (the
    request times out here); without the second, /readyz stays 200.
    """
    data = tmp_path / "data"
    env = {"LOCKSTEP_BUSY_TIMEOUT_MS": "1000"}
    timeout = aiohttp.ClientTimeout(total=10)
    with Service(data, workers=2, env=env) as service:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            increment = f"{service.url}/counters/c/increment"
            async with http.post(increment) as r:
                assert r.status == 200
            holder = os.open(data / "lockstep.db.writer-turn", os.O_RDWR)
            try:
                fcntl.flock(holder, fcntl.LOCK_EX)
                for _ in range(2):  # new connections: either worker
                    started = time.monotonic()
                    async with http.post(increment, headers={"Connection": "close"}) as r:
                        assert r.status == 503
                        assert r.headers["Retry-After"] == "1"
                        problem = await r.json(content_type=None)
                        assert "write turn" in problem["detail"]
                    assert time.monotonic() - started < 3
                    async with http.get(f"{service.url}/readyz") as r:
                        assert r.status == 503
            finally:
                os.close(holder)  # lets go of the turn
            for _ in range(100):  # the readiness probe finds the way clear again
                async with http.get(f"{service.url}/readyz", headers={"Connection": "close"}) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
            for _ in range(4):
                async with http.get(f"{service.url}/readyz", headers={"Connection": "close"}) as r:
                    assert r.status == 200
            async with http.post(increment) as r:
                assert r.status == 200
                assert (await r.json())["value"] == 2  # the 503s changed nothing
