"""Write combining: queued operations on one resource go out together, each with its own outcome."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Awaitable

import pytest

import app.storage.sqlite.writes as sqlite_writes
from app.combining import Batch, Combiner, OpenBatch, ops_of
from app.domain import Counted, CounterOp, CounterOutcome, Increment
from app.errors import LockTimeout
from app.locks import LockRegistry
from app.storage.sqlite import SQLiteStorage
from tests.outcomes import value, values

pytestmark = pytest.mark.backends("sqlite")


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
    locks = LockRegistry(5)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, apply)
    values = await asyncio.gather(*(combiner.submit("hits", Increment(1)) for _ in range(200)))
    assert sorted(map(value, values)) == list(range(1, 201))
    assert sum(apply.batches) == 200
    assert len(apply.batches) <= 3
    assert value(await storage.get_counter("hits")) == 200
    assert len(locks) == 0


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
    assert values(await asyncio.gather(leader, *others)) == [1, 11, 21, 31, 41]
    assert taken == [5]  # one batch, not the leader's alone and then the rest
    assert len(locks) == 0


async def test_values_follow_arrival_order(storage: SQLiteStorage) -> None:
    """Each request gets the value a one-at-a-time increment in arrival order would give."""
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner(
        "counter", LockRegistry(5), storage.apply_counter_ops
    )
    steps = [1, 10, 100, -5, 1000]
    outcomes = await asyncio.gather(*(combiner.submit("c", Increment(s)) for s in steps))
    assert values(outcomes) == [1, 11, 111, 106, 1106]


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
    assert value(await combiner.submit("c", Increment(1))) == 1
    assert value(await storage.get_counter("c")) == 1
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
    assert value(await combiner.submit("c", Increment(1))) == 1
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
    outcomes = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert sorted(map(value, outcomes)) == [2, 3, 4, 5, 6]
    assert value(await storage.get_counter("c")) == 6


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
    assert value(await leader) == 1
    assert value(await combiner.submit("c", Increment(1))) == 2
    assert len(locks) == 0


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
    assert sorted(map(value, await asyncio.gather(first, *rest))) == list(range(1, 12))
    assert held_during == [True, True]
    assert len(locks) == 0
    async with locks.hold("counter:c", max_wait=0.1):
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
    assert value(await first) == 1
    assert value(await third) == 101
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert value(await storage.get_counter("c")) == 101
    assert len(locks) == 0


async def test_cancellation_storm_applies_exactly_the_claimed_increments(
    storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half of 1,000 increments to 4 counters cancelled at random: applied once iff batched.

    Survivors each get a distinct value, each counter ends at the number of increments
    applied, and neither the combiner nor the lock registry holds anything afterwards.
    A batch's first op is in it from the start; the others join when SQLite's writer takes
    the batch (``ops_of``). Both moments and every cancellation are numbered on one clock
    of events, so the test knows exactly which ops a correct combiner applies.
    """
    events = itertools.count()
    started: dict[int, int] = {}  # id(batch) → event when the combiner handed it to storage
    claimed: dict[int, int] = {}  # id(op) → event when it joined a batch
    applied: Counter[int] = Counter()  # id(op) → how many transactions it was part of
    cancelled_at: dict[int, int] = {}  # request index → event of its task's cancellation

    def apply(key: str, batch: OpenBatch[CounterOp]) -> Awaitable[list[CounterOutcome]]:
        started[id(batch)] = next(events)
        return storage.apply_counter_ops(key, batch)

    def recording_ops_of(batch: Batch[CounterOp]) -> list[CounterOp]:
        ops = ops_of(batch)
        now = next(events)
        for i, op in enumerate(ops):
            claimed[id(op)] = started[id(batch)] if i == 0 else now
            applied[id(op)] += 1
        return ops

    monkeypatch.setattr(sqlite_writes, "ops_of", recording_ops_of)
    locks = LockRegistry(timeout=30)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, apply)
    rng = random.Random(11)
    keys = [f"c{i}" for i in range(4)]
    ops = [Increment(1) for _ in range(1000)]
    key_of = [rng.choice(keys) for _ in ops]
    doomed = set(rng.sample(range(len(ops)), len(ops) // 2))
    tasks: list[asyncio.Task[CounterOutcome]] = []
    victims: list[int] = []

    def cancel(i: int) -> None:
        cancelled_at[i] = next(events)
        if not tasks[i].cancel():  # too late: it already returned its value
            del cancelled_at[i]

    async def storm() -> None:
        # Waves of 100 requests, each followed by loop turns until a transaction committed,
        # cancelling doomed requests along the way: a third of each wave's before their
        # tasks ever ran, the others at random turns: queued, leading a batch, or in a
        # transaction under way on the writer thread.
        for wave in range(0, len(ops), 100):
            fresh = [i for i in range(wave, wave + 100) if i in doomed]
            tasks.extend(
                asyncio.create_task(combiner.submit(key_of[i], ops[i]))
                for i in range(wave, wave + 100)
            )
            rng.shuffle(fresh)
            for _ in range(len(fresh) // 3):
                cancel(fresh.pop())
            victims.extend(fresh)
            rng.shuffle(victims)
            commits = storage.batches
            while storage.batches == commits:
                await asyncio.sleep(0)
                if victims and rng.random() < 0.3:
                    cancel(victims.pop())
        while victims:
            cancel(victims.pop())
            await asyncio.sleep(0)

    await asyncio.wait_for(storm(), 30)
    gathered = asyncio.gather(*tasks, return_exceptions=True)
    results = await asyncio.wait_for(gathered, 30)

    survivors = [i for i in range(len(ops)) if i not in cancelled_at]
    for i in survivors:
        assert isinstance(results[i], Counted), results[i]
        assert applied[id(ops[i])] == 1
    for i, when in cancelled_at.items():
        assert isinstance(results[i], asyncio.CancelledError), results[i]
        # Applied, once, if and only if it was in a batch before it was cancelled.
        in_batch = claimed.get(id(ops[i]), when) < when
        assert applied[id(ops[i])] == int(in_batch), i
    late = sum(applied[id(ops[i])] for i in cancelled_at)
    assert len(cancelled_at) > len(doomed) // 2
    assert 0 < late < len(cancelled_at)  # the storm hit ops in batches and ops still waiting
    for key in keys:
        seen = [value(results[i]) for i in survivors if key_of[i] == key]
        assert len(seen) == len(set(seen))
        final = value(await storage.get_counter(key))
        assert final == sum(applied[id(op)] for op, k in zip(ops, key_of, strict=True) if k == key)
        assert all(0 < v <= final for v in seen)
    assert locks.waiting() == 0
    assert len(locks) == 0


async def test_task_queued_between_requests_keeps_its_turn(storage: SQLiteStorage) -> None:
    """A task holding the lock by hand, queued between two requests, runs between their batches."""
    gate = asyncio.Event()
    order: list[str] = []

    async def gated_apply(name: str, ops: Batch[CounterOp]) -> list[CounterOutcome]:
        await gate.wait()
        outcomes = await storage.apply_counter_ops(name, ops_of(ops))
        order.append(f"batch of {len(outcomes)}")
        return outcomes

    locks = LockRegistry(timeout=5)
    combiner: Combiner[CounterOp, CounterOutcome] = Combiner("counter", locks, gated_apply)

    async def by_hand() -> None:
        async with locks.hold("counter:c"):
            order.append("by hand")

    first = asyncio.create_task(combiner.submit("c", Increment(1)))
    await asyncio.sleep(0)
    hand = asyncio.create_task(by_hand())
    await asyncio.sleep(0)
    later = [asyncio.create_task(combiner.submit("c", Increment(1))) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert values(await asyncio.gather(first, *later)) == [1, 2, 3, 4]
    await hand
    assert order == ["batch of 1", "by hand", "batch of 3"]
    assert len(locks) == 0
