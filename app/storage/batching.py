"""The queue both SQLite connections are fed through: work waiting together runs together.

A task submits an item and gets a future; one consumer task takes everything queued (up
to ``max_batch``) and runs it as one batch, in one hop into the connection's thread, then
settles each item's future with its own result or error. The writer
(``app.storage.sqlite.writer``) commits a batch as one transaction; the reader
(``app.storage.sqlite.reads``) runs a batch of queries back to back.

A queue may *gather* before it drains: it lets the event loop run up to ``gather`` more
turns, so requests whose bytes have already arrived (or are about to) join this batch
instead of waiting for the next one. It stops at the first turn that comes back at once,
i.e. when the loop had nothing else to do, so a lone request is not held up. "At once"
is measured against this machine: within 3x the fastest turn the queue has seen (an idle
one), kept between 15 and 100 µs, so a slow machine is not mistaken for a busy one. Under
load this is what makes a commit worth its fsync (figures in docs/design.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Generic, TypeVar

from app.errors import StorageUnavailable

Item = TypeVar("Item")


# One item's result: (True, value) or (False, the exception to raise to its submitter).
Outcome = tuple[bool, Any]

# A loop turn this short ran nothing but the gathering task itself: the loop is idle.
# On a slower machine an idle turn takes longer, so the bar rises to 3x the fastest turn
# seen, up to a ceiling that a turn doing real work (a request or more) stays above.
IDLE_TURN_S = 15e-6
IDLE_TURN_FACTOR = 3
IDLE_TURN_MAX_S = 100e-6
_clock = time.perf_counter


class Gatherer:
    """Lets the event loop run up to ``turns`` more times before a batch is taken.

    It stops at the first turn that comes back at once (the loop had nothing else to do),
    so a lone request is not held up; while the worker is busy, requests whose bytes are
    arriving join the batch. Both backends' writers gather (``LOCKSTEP_COMMIT_GATHER``).
    """

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self._idle_turn = IDLE_TURN_S  # raised once turns prove slower on this machine
        self._fastest_turn = float("inf")

    async def gather(self) -> None:
        """Let the event loop run up to ``turns`` times, or until a turn finds it idle."""
        before = _clock()
        for _ in range(self.turns):
            await asyncio.sleep(0)
            now = _clock()
            took = now - before
            if took < self._fastest_turn:
                self._fastest_turn = took
                self._idle_turn = min(max(IDLE_TURN_S, IDLE_TURN_FACTOR * took), IDLE_TURN_MAX_S)
            if took < self._idle_turn:
                return
            before = now


class BatchQueue(Generic[Item]):
    """Queue items; a consumer task runs them in batches of at most ``max_batch``."""

    def __init__(self, max_batch: int, name: str, gather: int = 0) -> None:
        self._max_batch = max_batch
        self._gatherer = Gatherer(gather)
        self._queue: deque[tuple[Item, asyncio.Future[Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._consume(), name=name)

    def submit(self, item: Item) -> asyncio.Future[Any]:
        """Queue ``item``; the future resolves once its batch has run."""
        if self._closing:
            raise StorageUnavailable("shutting down")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._queue.append((item, fut))
        self._wakeup.set()
        return fut

    async def _run_batch(self, items: list[Item]) -> list[Outcome]:
        """Each item's outcome, in order. Never raises: a failure is every item's outcome."""
        raise NotImplementedError

    async def _after_batch(self) -> None:
        """Housekeeping between batches (the writer bounds its WAL here)."""

    async def _consume(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._gatherer.turns:
                await self._gatherer.gather()
            size = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
            outcomes = await self._run_batch([item for item, _ in batch])
            for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                if fut.done():  # its submitter was cancelled meanwhile
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            await self._after_batch()

    async def close(self) -> None:
        """Run everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
