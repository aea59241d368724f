"""The write turn held by another process: bounded waits, nothing applied late, recovery."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

import pytest

from app.domain import Increment
from app.errors import StorageUnavailable
from app.storage.sqlite import SQLiteStorage
from app.storage.sqlite.turn import TurnClaim
from tests.conftest import settings_for
from tests.outcomes import values


def test_claim_is_won_by_exactly_one_side() -> None:
    """Once the thread has started the transaction the loop cannot abandon it, and once the
    loop has abandoned it the thread does not start it."""
    started = TurnClaim()
    assert started.start()
    assert not started.abandon()
    abandoned = TurnClaim()
    assert abandoned.abandon()
    assert not abandoned.start()


async def test_held_turn_fails_writes_in_time_and_never_applies_them_later(
    tmp_path: Path,
) -> None:
    """With the turn held elsewhere, a write fails after the busy timeout, the next ones and
    the readiness ping fail at once; after the holder lets go, writes work again and none of
    the failed ones was applied.

    Protection: TurnKeeper's deadline and TurnClaim. Without the claim, the write that timed
    out would still be committed once the turn came free (the next write would read 2).
    """
    settings = settings_for(tmp_path, busy_timeout_ms=300)
    storage = await SQLiteStorage.open(settings)
    holder = os.open(f"{settings.sqlite_path}.writer-turn", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="write turn"):
            await storage.apply_counter_ops("c", [Increment(1)])
        assert 0.3 <= time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="write turn"):
            await storage.apply_counter_ops("c", [Increment(1)])
        with pytest.raises(StorageUnavailable, match="write turn"):
            await storage.ping()
        assert time.monotonic() - started < 0.2
        fcntl.flock(holder, fcntl.LOCK_UN)
        for _ in range(100):  # the abandoned call gets the turn, lets it go, comes back
            try:
                await storage.ping()
                break
            except StorageUnavailable:
                await asyncio.sleep(0.02)
        assert values(await storage.apply_counter_ops("c", [Increment(1)])) == [1]
    finally:
        os.close(holder)
        await storage.close()
