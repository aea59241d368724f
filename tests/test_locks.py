"""The lock registry: exclusion, FIFO order, timeouts, cancellation, and no leaked entries."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.errors import LockTimeout
from app.locks import LockRegistry


async def test_hold_admits_one_task_at_a_time() -> None:
    """Tasks holding the same key never overlap (fails if hold() does not lock)."""
    registry = LockRegistry(timeout=5)
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        async with registry.hold("k"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(50)))
    assert most == 1
    assert len(registry) == 0


async def test_hold_lets_different_keys_run_together() -> None:
    """Locks are per key: holders of different keys are inside at the same time."""
    registry = LockRegistry(timeout=5)
    both_inside = asyncio.Event()
    inside = 0

    async def worker(key: str) -> None:
        nonlocal inside
        async with registry.hold(key):
            inside += 1
            if inside == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), 5)

    await asyncio.gather(worker("a"), worker("b"))
    assert both_inside.is_set()


async def test_waiters_are_served_in_arrival_order() -> None:
    """Waiters get the lock first-in, first-out."""
    registry = LockRegistry(timeout=5)
    order: list[int] = []
    release = asyncio.Event()

    async def first() -> None:
        async with registry.hold("k"):
            await release.wait()

    async def waiter(i: int) -> None:
        async with registry.hold("k"):
            order.append(i)

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    waiters = []
    for i in range(20):
        waiters.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # let each one queue before the next arrives
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == list(range(20))


async def test_registry_is_empty_after_many_distinct_keys() -> None:
    """An entry lives only while somebody holds or waits for it."""
    registry = LockRegistry(timeout=5)

    async def touch(key: str) -> None:
        async with registry.hold(key):
            assert key in registry
            await asyncio.sleep(0)

    for start in range(0, 100_000, 10_000):
        await asyncio.gather(*(touch(f"c{i}") for i in range(start, start + 10_000)))
    assert len(registry) == 0


async def test_entry_survives_while_waiters_remain() -> None:
    """The entry is not dropped when the holder leaves but a waiter is still queued."""
    registry = LockRegistry(timeout=5)
    release = asyncio.Event()
    seen_inside: list[bool] = []

    async def holder() -> None:
        async with registry.hold("k"):
            await release.wait()

    async def waiter() -> None:
        async with registry.hold("k"):
            seen_inside.append("k" in registry)

    tasks = [asyncio.create_task(holder()), asyncio.create_task(waiter())]
    await asyncio.sleep(0)
    assert registry.waiting() == 1
    release.set()
    await asyncio.gather(*tasks)
    assert seen_inside == [True]
    assert len(registry) == 0


async def test_hold_times_out_with_lock_timeout() -> None:
    """A waiter that cannot get the lock in time gets LockTimeout and leaves no trace."""
    registry = LockRegistry(timeout=0.05)
    release = asyncio.Event()

    async def holder() -> None:
        async with registry.hold("counter:x"):
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    with pytest.raises(LockTimeout) as caught:
        async with registry.hold("counter:x"):
            pytest.fail("entered a lock that was held")
    assert caught.value.resource == "counter:x"
    assert caught.value.status == 503
    assert registry.waiting() == 0
    release.set()
    await task
    assert len(registry) == 0


async def test_cancelled_holder_releases_the_lock() -> None:
    """Cancelling a task inside hold() frees the lock for the next waiter."""
    registry = LockRegistry(timeout=5)
    entered = asyncio.Event()

    async def holder() -> None:
        async with registry.hold("k"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with registry.hold("k", timeout=1):
        pass
    assert len(registry) == 0


async def test_cancellation_storm_leaves_lock_free_and_serves_survivors_once() -> None:
    """1,000 waiters on one key, half cancelled at random: survivors each run once, alone."""
    registry = LockRegistry(timeout=30)
    rng = random.Random(7)
    served: list[int] = []
    inside = 0
    most = 0
    release = asyncio.Event()

    async def holder() -> None:
        async with registry.hold("hot"):
            await release.wait()

    async def waiter(i: int) -> None:
        nonlocal inside, most
        async with registry.hold("hot"):
            inside += 1
            most = max(most, inside)
            served.append(i)
            await asyncio.sleep(0)
            inside -= 1

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(waiter(i)) for i in range(1000)]
    await asyncio.sleep(0)
    doomed = set(rng.sample(range(1000), 500))
    # Cancel some before the lock is released and some while the queue drains, so that
    # cancellations hit waiters that were just woken up as well as sleeping ones.
    early = set(list(doomed)[:250])
    for i in early:
        tasks[i].cancel()
    release.set()
    for i in doomed - early:
        tasks[i].cancel()
        await asyncio.sleep(0)
    results = await asyncio.gather(first, *tasks, return_exceptions=True)

    survivors = {i for i, r in enumerate(results[1:]) if not isinstance(r, BaseException)}
    assert most == 1
    assert sorted(served) == sorted(survivors)
    assert len(served) == len(set(served))
    assert len(survivors) >= 500
    assert len(registry) == 0
    async with registry.hold("hot", timeout=1):
        pass


async def test_try_acquire_takes_only_a_free_lock() -> None:
    """try_acquire takes a free lock without waiting and refuses one somebody holds."""
    registry = LockRegistry(timeout=5)
    held = registry.try_acquire("counter:x")
    assert held is not None
    assert registry.held() == 1
    assert registry.try_acquire("counter:x") is None
    with pytest.raises(LockTimeout):
        async with registry.hold("counter:x", timeout=0.01):
            pytest.fail("entered a lock that try_acquire holds")
    held.release()
    assert len(registry) == 0
    async with registry.hold("counter:x", timeout=0.1):
        assert registry.try_acquire("counter:x") is None
