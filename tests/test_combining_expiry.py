"""The combiner's shared expiry timer: each queued request gets its own full lock timeout."""

from __future__ import annotations

import asyncio

import pytest

from app.combining import Batch, Combiner, ops_of
from app.domain import CounterOp, CounterOutcome, Increment
from app.errors import LockTimeout
from app.locks import LockRegistry
from app.storage.sqlite import SQLiteStorage
from tests.outcomes import value, values

pytestmark = pytest.mark.backends("sqlite")


async def test_later_waiter_keeps_its_own_deadline_when_earlier_one_expires(
    storage: SQLiteStorage,
) -> None:
    """A request queued later on another key is not expired by an earlier waiter's deadline."""
    gate = asyncio.Event()

    async def stuck_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()
        return await storage.apply_counter_ops(name, ops_of(ops))

    timeout = 0.3
    loop = asyncio.get_running_loop()
    locks = LockRegistry(timeout)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, stuck_apply)
    leaders = [asyncio.create_task(combiner.submit(k, Increment(1))) for k in ("a", "b")]
    await asyncio.sleep(0)
    early = asyncio.create_task(combiner.submit("a", Increment(10)))
    await asyncio.sleep(timeout / 2)
    late = asyncio.create_task(combiner.submit("b", Increment(10)))
    started = loop.time()
    with pytest.raises(LockTimeout):
        await early
    assert not late.done()
    with pytest.raises(LockTimeout):
        await late
    assert loop.time() - started >= timeout * 0.9
    gate.set()
    assert values(await asyncio.gather(*leaders)) == [1, 1]
    assert value(await storage.get_counter("a")) == 1
    assert value(await storage.get_counter("b")) == 1
    assert len(locks) == 0


async def test_waiters_on_many_keys_all_expire(storage: SQLiteStorage) -> None:
    """Every request queued behind stuck batches, on any key, times out and is never applied."""
    gate = asyncio.Event()

    async def stuck_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()
        return await storage.apply_counter_ops(name, ops_of(ops))

    locks = LockRegistry(0.05)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, stuck_apply)
    keys = [f"k{i}" for i in range(5)]
    leaders = [asyncio.create_task(combiner.submit(k, Increment(1))) for k in keys]
    await asyncio.sleep(0)
    waiters = [combiner.submit(k, Increment(100)) for k in keys for _ in range(3)]
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, LockTimeout) for r in results)
    gate.set()
    assert values(await asyncio.gather(*leaders)) == [1] * 5
    assert [value(await storage.get_counter(k)) for k in keys] == [1] * 5
    assert locks.waiting() == 0
