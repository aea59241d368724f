"""Write combining: queued operations on one resource go out together, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.combining import Batch, Combiner, OpenBatch, ops_of
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

    async def __call__(self, name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        taken = ops_of(ops)
        self.batches.append(len(taken))
        return await self.storage.apply_counter_ops(name, taken)


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


async def test_requests_queued_before_storage_takes_the_batch_join_it(
    storage: SQLiteStorage,
) -> None:
    """The batch stays open until storage takes it: requests queued meanwhile ride along."""
    gate = asyncio.Event()
    taken: list[int] = []

    async def late_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()  # storage busy: the batch has not started yet
        todo = ops_of(ops)
        taken.append(len(todo))
        return await storage.apply_counter_ops(name, todo)

    locks = LockRegistry(5)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, late_apply)
    leader = asyncio.create_task(combiner.submit("c", Increment(1)))
    await asyncio.sleep(0)
    others = [asyncio.create_task(combiner.submit("c", Increment(10))) for _ in range(4)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(leader, *others) == [1, 11, 21, 31, 41]
    assert taken == [5]  # one batch, not the leader's alone and then the rest
    assert len(locks) == 0
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

    async def slow_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()
        return await storage.apply_counter_ops(name, ops_of(ops))

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


async def test_queued_request_times_out_while_batch_is_stuck(storage: SQLiteStorage) -> None:
    """A request still queued when the lock timeout passes gets LockTimeout and is never applied."""
    gate = asyncio.Event()

    async def stuck_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()
        return await storage.apply_counter_ops(name, ops_of(ops))

    locks = LockRegistry(timeout=0.05)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, stuck_apply)
    leader = asyncio.create_task(combiner.submit("c", Increment(1)))
    await asyncio.sleep(0)
    with pytest.raises(LockTimeout) as caught:
        await combiner.submit("c", Increment(1000))
    assert caught.value.resource == "counter:c"
    gate.set()
    assert await leader == 1
    assert await combiner.submit("c", Increment(1)) == 2
    assert len(locks) == 0
    assert len(combiner) == 0


async def test_lock_is_handed_on_between_batches_then_released(storage: SQLiteStorage) -> None:
    """The lock stays held while batches follow each other and is free once the queue drains."""
    locks = LockRegistry(timeout=5)
    held_during: list[bool] = []

    async def watching_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        taken = ops_of(ops)  # at once: the others queue for a second batch
        held_during.append("counter:c" in locks)
        return await storage.apply_counter_ops(name, taken)

    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, watching_apply)
    first = asyncio.create_task(combiner.submit("c", Increment(1)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(combiner.submit("c", Increment(1))) for _ in range(10)]
    assert sorted(await asyncio.gather(first, *rest)) == list(range(1, 12))  # type: ignore[type-var]
    assert held_during == [True, True]
    assert len(locks) == 0
    async with locks.hold("counter:c", timeout=0.1):
        pass


async def test_request_cancelled_before_its_batch_is_taken_is_left_out(
    storage: SQLiteStorage,
) -> None:
    """A queued request cancelled just before storage takes the batch is not in it."""
    loop = asyncio.get_running_loop()
    handed: list[tuple[OpenBatch[CounterOp], asyncio.Future[list[CounterOutcome]]]] = []

    def held_apply(name: str, batch: OpenBatch[CounterOp]) -> asyncio.Future[list[CounterOutcome]]:
        done: asyncio.Future[list[CounterOutcome]] = loop.create_future()
        handed.append((batch, done))
        return done

    locks = LockRegistry(timeout=5)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, held_apply)
    first = asyncio.create_task(combiner.submit("c", Increment(1)))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(combiner.submit("c", Increment(10)))
    third = asyncio.create_task(combiner.submit("c", Increment(100)))
    await asyncio.sleep(0)
    ((batch, done),) = handed
    cancelled.cancel()  # its task has not run since: it is still in the queue
    taken = batch.take()
    assert [op.by for op in taken if isinstance(op, Increment)] == [1, 100]
    done.set_result(await storage.apply_counter_ops("c", taken))
    assert await first == 1
    assert await third == 101
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await storage.get_counter("c") == 101
    assert len(locks) == 0
    assert len(combiner) == 0
