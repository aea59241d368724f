"""Write combining: queued operations on one resource go out together, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.combining import Combiner
from app.domain import CounterOp, CounterOutcome, Increment
from app.errors import LockTimeout
from app.locks import LockRegistry
from app.storage.sqlite import SQLiteStorage
from tests.conftest import settings_for


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = await SQLiteStorage.open(settings_for(tmp_path))
    yield storage
    await storage.close()


class CountingApply:
    """Wraps the real storage call and records each batch it is given."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage
        self.batches: list[int] = []

    async def __call__(self, name: str, ops: list[CounterOp]) -> list[CounterOutcome]:
        self.batches.append(len(ops))
        return await self.storage.apply_counter_ops(name, ops)


async def test_concurrent_increments_get_distinct_values_in_few_batches(
    storage: SQLiteStorage,
) -> None:
    """200 concurrent increments get exactly 1..200, applied in a handful of storage calls."""
    apply = CountingApply(storage)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", LockRegistry(5), apply)
    values = await asyncio.gather(*(combiner.submit("hits", Increment(1)) for _ in range(200)))
    assert sorted(v for v in values if isinstance(v, int)) == list(range(1, 201))
    assert sum(apply.batches) == 200
    assert len(apply.batches) <= 3
    assert await storage.get_counter("hits") == 200
    assert len(combiner) == 0


async def test_values_follow_arrival_order(storage: SQLiteStorage) -> None:
    """Each request gets the value a one-at-a-time increment in arrival order would give."""
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner(
        "counter", LockRegistry(5), storage.apply_counter_ops
    )
    steps = [1, 10, 100, -5, 1000]
    values = await asyncio.gather(*(combiner.submit("c", Increment(s)) for s in steps))
    assert values == [1, 11, 111, 106, 1106]


async def test_lock_timeout_withdraws_the_operation(storage: SQLiteStorage) -> None:
    """A request that times out waiting for the lock is never applied later by another holder."""
    locks = LockRegistry(timeout=0.05)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner(
        "counter", locks, storage.apply_counter_ops
    )
    async with locks.hold("counter:c"):
        with pytest.raises(LockTimeout):
            await combiner.submit("c", Increment(5))
    # The next holder flushes whatever is queued; the timed-out +5 must not be there.
    assert await combiner.submit("c", Increment(1)) == 1
    assert await storage.get_counter("c") == 1
    assert len(locks) == 0


async def test_cancelled_request_is_never_applied(storage: SQLiteStorage) -> None:
    """A request cancelled while waiting for the lock leaves no operation behind."""
    locks = LockRegistry(timeout=5)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner(
        "counter", locks, storage.apply_counter_ops
    )
    async with locks.hold("counter:c"):
        task = asyncio.create_task(combiner.submit("c", Increment(100)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await combiner.submit("c", Increment(1)) == 1
    assert len(locks) == 0


async def test_cancelled_holder_still_settles_its_batch(storage: SQLiteStorage) -> None:
    """Cancelling the lock holder mid-commit still gives every request in its batch an outcome."""
    gate = asyncio.Event()

    async def slow_apply(name: str, ops: list[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()
        return await storage.apply_counter_ops(name, ops)

    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", LockRegistry(5), slow_apply)
    holder = asyncio.create_task(combiner.submit("c", Increment(1)))
    await asyncio.sleep(0)
    # These queue behind the holder and go out in the following batch.
    others = [asyncio.create_task(combiner.submit("c", Increment(1))) for _ in range(5)]
    await asyncio.sleep(0)
    holder.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await holder
    values = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert sorted(v for v in values if isinstance(v, int)) == [2, 3, 4, 5, 6]
    assert await storage.get_counter("c") == 6
