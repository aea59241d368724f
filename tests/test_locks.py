"""The lock registry: exclusion, FIFO order, timeouts, cancellation, several keys, no leaks."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.errors import LockTimeout
from app.locks import Held, LockRegistry, Waiter


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

    for start in range(0, 20_000, 10_000):
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
    async with registry.hold("k", max_wait=1):
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
    async with registry.hold("hot", max_wait=1):
        pass


async def test_take_or_queue_takes_a_free_lock_and_queues_behind_a_holder() -> None:
    """take_or_queue takes a free lock at once; on a held one it queues, granted on release."""
    registry = LockRegistry(timeout=5)
    loop = asyncio.get_running_loop()
    first = Waiter("counter:x", loop.create_future(), 5)
    held = registry.take_or_queue(first)
    assert held is not None
    assert not first.queued
    second = Waiter("counter:x", loop.create_future(), 5)
    assert registry.take_or_queue(second) is None
    assert registry.waiting() == 1
    assert not second.future.done()
    held.release()
    granted = second.future.result()
    assert isinstance(granted, Held)
    assert registry.waiting() == 0
    assert "counter:x" in registry
    granted.release()
    assert len(registry) == 0


async def test_shorter_deadline_expires_before_an_earlier_longer_one() -> None:
    """A waiter with a short timeout queued behind a patient one times out on its own deadline."""
    registry = LockRegistry(timeout=5)
    held = await registry.acquire("k")
    patient = asyncio.create_task(registry.acquire("k", max_wait=30))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(LockTimeout):
        await registry.acquire("k", max_wait=0.05)
    assert loop.time() - started < 1
    assert registry.waiting() == 1
    held.release()
    (await patient).release()
    assert len(registry) == 0


async def test_opposite_orders_of_two_keys_never_deadlock() -> None:
    """Two tasks taking {a, b} and {b, a} over and over all finish (fails without sorting).

    Each releases in reverse order and comes straight back, so without the canonical
    order one task holds a and waits for b while the other holds b and waits for a.
    """
    registry = LockRegistry(timeout=1)
    rounds = [0, 0]

    async def worker(i: int, keys: tuple[str, str]) -> None:
        for _ in range(200):
            async with registry.hold(*keys):
                rounds[i] += 1
                await asyncio.sleep(0)

    await asyncio.gather(worker(0, ("a", "b")), worker(1, ("b", "a")))
    assert rounds == [200, 200]
    assert len(registry) == 0


async def test_hold_of_several_keys_excludes_holders_of_any_of_them() -> None:
    """A task holding {a, b} never overlaps a task holding a or b alone."""
    registry = LockRegistry(timeout=5)
    inside: dict[str, int] = {"a": 0, "b": 0}
    most = 0

    async def worker(keys: tuple[str, ...]) -> None:
        nonlocal most
        for _ in range(20):
            async with registry.hold(*keys):
                for key in keys:
                    inside[key] += 1
                most = max(most, *inside.values())
                await asyncio.sleep(0)
                for key in keys:
                    inside[key] -= 1

    await asyncio.gather(worker(("a", "b")), worker(("a",)), worker(("b",)), worker(("b", "a")))
    assert most == 1
    assert len(registry) == 0


async def test_hold_of_several_keys_releases_what_it_took_on_timeout() -> None:
    """Timing out on the second key releases the first: nothing stays held or queued."""
    registry = LockRegistry(timeout=5)
    blocker = await registry.acquire("b")
    with pytest.raises(LockTimeout) as caught:
        async with registry.hold("b", "a", max_wait=0.05):
            pytest.fail("entered while b was held")
    assert caught.value.resource == "b"
    assert "a" not in registry
    assert registry.waiting() == 0
    blocker.release()
    assert len(registry) == 0


async def test_hold_of_several_keys_shares_one_deadline() -> None:
    """The timeout bounds the wait for all keys together, not each key afresh."""
    registry = LockRegistry(timeout=5)
    loop = asyncio.get_running_loop()
    a = await registry.acquire("a")
    b = await registry.acquire("b")
    loop.call_later(0.15, a.release)  # a comes free most of the way through the deadline
    started = loop.time()
    with pytest.raises(LockTimeout):
        async with registry.hold("a", "b", max_wait=0.2):
            pytest.fail("entered while b was held")
    assert loop.time() - started < 0.3  # not 0.15 + another 0.2 for b
    assert len(registry) == 1  # only b, still held by its owner
    b.release()


async def test_cancelled_hold_of_several_keys_releases_what_it_took() -> None:
    """Cancelling a task waiting for its second key releases the first."""
    registry = LockRegistry(timeout=5)
    blocker = await registry.acquire("b")
    task = asyncio.create_task(registry.hold("a", "b").__aenter__())
    await asyncio.sleep(0)  # the task took a and queued for b
    assert registry.waiting() == 1
    assert "a" in registry
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "a" not in registry
    assert registry.waiting() == 0
    blocker.release()
    assert len(registry) == 0


async def test_lock_granted_to_a_cancelled_waiter_passes_on() -> None:
    """A waiter cancelled in the same turn it is granted the lock hands it to the next one."""
    registry = LockRegistry(timeout=5)
    held = await registry.acquire("k")
    doomed = asyncio.create_task(registry.acquire("k"))
    await asyncio.sleep(0)
    after = asyncio.create_task(registry.acquire("k", max_wait=1))
    await asyncio.sleep(0)
    held.release()  # granted to ``doomed``, whose task has not run since
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    (await after).release()
    assert len(registry) == 0
