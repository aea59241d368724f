"""BatchQueue: items waiting together run as one batch, each gets its own outcome."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import pytest

from app.errors import StorageUnavailable
from app.storage import batching
from app.storage.batching import BatchQueue, Outcome
from tests.storage.busy import busy_turns


class Doubler(BatchQueue[int]):
    """Doubles each item; odd items fail. Records the batches it ran."""

    def __init__(self, max_batch: int, gather: int = 0) -> None:
        super().__init__(max_batch, "test-doubler", gather)
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def _run_batch(self, items: list[int]) -> list[Outcome]:
        await self.gate.wait()
        self.batches.append(items)
        return [(True, i * 2) if i % 2 == 0 else (False, ValueError(i)) for i in items]


async def test_items_waiting_together_share_a_batch_up_to_the_limit() -> None:
    """Five items submitted at once run as batches of at most three, in order."""
    queue = Doubler(max_batch=3)
    results = await asyncio.gather(*(queue.submit(i) for i in (0, 2, 4, 6, 8)))
    assert results == [0, 4, 8, 12, 16]
    assert queue.batches == [[0, 2, 4], [6, 8]]
    await queue.close()


async def test_each_item_gets_its_own_error() -> None:
    """A failing item fails alone; its batch-mates get their results."""
    queue = Doubler(max_batch=10)
    results = await asyncio.gather(queue.submit(2), queue.submit(3), return_exceptions=True)
    assert results[0] == 4
    assert isinstance(results[1], ValueError)
    await queue.close()


async def test_a_cancelled_submitter_is_skipped_and_the_rest_settled() -> None:
    """An item whose waiter gave up still runs (it was queued), without an error anywhere."""
    queue = Doubler(max_batch=10)
    queue.gate.clear()  # hold the first batch in flight
    first = queue.submit(0)
    await asyncio.sleep(0)  # the consumer takes it and waits at the gate
    gone = queue.submit(2)
    kept = queue.submit(4)
    gone.cancel()
    queue.gate.set()
    assert await first == 0
    assert await kept == 8
    assert queue.batches == [[0], [2, 4]]
    await queue.close()


async def test_close_runs_what_is_queued_then_refuses_more() -> None:
    """close() answers everything already queued; a later submit is a 503, not a hang."""
    queue = Doubler(max_batch=1)
    pending: list[asyncio.Future[Any]] = [queue.submit(i) for i in (0, 2, 4)]
    await queue.close()
    assert [f.result() for f in pending] == [0, 4, 8]
    with pytest.raises(StorageUnavailable):
        queue.submit(6)


@pytest.mark.parametrize(("gather", "first_batch"), [(0, [0]), (8, [0, 2, 4, 6])])
async def test_a_busy_loop_gathers_items_into_the_batch(
    gather: int, first_batch: list[int]
) -> None:
    """With ``gather``, items submitted over the next busy loop turns join the first batch."""
    queue = Doubler(max_batch=10, gather=gather)
    first = queue.submit(0)
    await busy_turns(12, [partial(queue.submit, i) for i in (2, 4, 6)])
    assert await first == 0
    await queue.close()
    assert queue.batches[0] == first_batch


async def test_an_idle_loop_does_not_hold_a_batch_back() -> None:
    """A lone item on an idle loop runs after a few turns, not after ``gather`` of them."""
    queue = Doubler(max_batch=10, gather=100_000)
    turns = 0
    item = queue.submit(0)
    while not item.done():
        turns += 1
        await asyncio.sleep(0)
    assert turns < 1_000
    await queue.close()


async def test_a_slow_machines_idle_loop_does_not_hold_a_batch_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where even an idle turn takes longer than 15 µs, idle is judged by the fastest turn."""
    real = time.perf_counter
    monkeypatch.setattr(batching, "_clock", lambda: real() * 10)  # every turn looks 10x longer
    queue = Doubler(max_batch=10, gather=100_000)
    for n in range(3):
        turns = 0
        item = queue.submit(n * 2)
        while not item.done():
            turns += 1
            await asyncio.sleep(0)
        assert turns < 1_000
    await queue.close()
