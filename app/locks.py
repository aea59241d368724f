"""The lock registry: the one place per-resource exclusion lives.

Each key (``counter:x``, ``item:y``) has at most one holder and a first-in first-out queue
of waiters. Its entry exists only while somebody holds it, so touching a million distinct
names leaves the registry empty again. A waiter not granted the lock by its deadline gets
``LockTimeout``; one timer, set for the earliest deadline, serves the whole registry.

Several keys are taken one at a time in sorted order under one deadline (``hold(*keys)``):
two tasks needing overlapping sets then queue for their first shared key and can never
wait for each other in a circle. Whatever was taken is released if the deadline passes
or the task is cancelled.

Write combining (``app.combining``) builds on two hooks. A releasing holder hands the lock
to the next waiter by calling ``Waiter.granted``, so a combiner starts the next batch right
there, without waking a task. And a holder may take the waiters at the front of its
queue that share its ``group`` (``Held.take_queued``): their work is then done under its
hold, and the registry forgets them.

These locks serialize work inside one worker process only; correctness across gunicorn
workers comes from the database (see ``app.storage``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from app.errors import LockTimeout

# A stale deadline (its waiter already served) is dropped when it reaches the top of the
# heap; the heap is rebuilt from the live ones when it holds this many more than twice them.
_SLACK = 1024
_NOBODY_WAITS = None  # an entry's queue while its key is held and nobody waits for it


class Waiter:
    """A place in one key's queue; by default ``future`` gets the ``Held`` or the timeout."""

    __slots__ = ("deadline", "future", "group", "key", "queued", "timeout")

    def __init__(
        self,
        key: str,
        future: asyncio.Future[Any],
        timeout: float,
        deadline: float | None = None,
        group: object = None,
    ) -> None:
        self.key = key
        self.future = future
        self.timeout = timeout  # for the error message: how long it was allowed to wait
        self.deadline = deadline  # loop time; None: ``timeout`` from when it is queued
        self.group = group  # a holder of this group may do this waiter's work
        self.queued = False

    def granted(self, held: Held) -> None:
        """The lock is this waiter's now; called by the holder that released it."""
        self.future.set_result(held)

    def expired(self, error: LockTimeout) -> None:
        """The deadline passed while the waiter was still queued."""
        self.future.set_exception(error)


class LockRegistry:
    """Per-resource exclusive locks: ``async with registry.hold(key): ...``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # A key is here exactly while it is held; its deque holds the waiters in order.
        self._entries: dict[str, deque[Waiter] | None] = {}
        self._waiting = 0
        self._deadlines: list[tuple[float, int, Waiter]] = []  # a heap, stale ones included
        self._order = itertools.count()  # breaks ties between equal deadlines
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def hold(self, *keys: str, max_wait: float | None = None) -> AsyncIterator[None]:
        """Exclusive access to every key; ``LockTimeout`` unless all are had in ``max_wait`` s.

        The keys are taken in sorted order, whatever order they are given in.
        """
        limit = self.timeout if max_wait is None else max_wait
        deadline = self._running_loop().time() + limit
        taken: list[Held] = []
        try:
            for key in sorted(set(keys)):
                taken.append(await self._acquire(key, limit, deadline))
            yield
        finally:
            for held in reversed(taken):
                held.release()

    async def acquire(self, key: str, max_wait: float | None = None) -> Held:
        """``key``'s lock for an owner that may hand it on; ``Held.release()`` frees it."""
        return await self._acquire(key, self.timeout if max_wait is None else max_wait, None)

    async def _acquire(self, key: str, max_wait: float, deadline: float | None) -> Held:
        waiter = Waiter(key, self._running_loop().create_future(), max_wait, deadline)
        held = self.take_or_queue(waiter)
        if held is not None:
            return held
        try:
            got: Held = await waiter.future
        except BaseException:
            answer = waiter.future
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                answer.result().release()  # granted just as the task was cancelled: pass it on
            else:
                self.withdraw(waiter)
            raise
        return got

    def take_or_queue(self, waiter: Waiter) -> Held | None:
        """The lock at once if nobody holds it; else queue ``waiter`` and return None."""
        key = waiter.key
        entries = self._entries
        if key not in entries:
            entries[key] = _NOBODY_WAITS
            return Held(self, key)
        queue = entries[key]
        if queue is None:
            queue = entries[key] = deque()
        queue.append(waiter)
        waiter.queued = True
        self._waiting += 1
        if waiter.deadline is None:
            waiter.deadline = self._running_loop().time() + waiter.timeout
        self._add_deadline(waiter)
        return None

    def withdraw(self, waiter: Waiter) -> None:
        """Take a waiter out of its queue (its task gave up); nothing if it is not queued."""
        if waiter.queued:
            queue = self._entries[waiter.key]
            assert queue is not None
            queue.remove(waiter)
            self._dequeued(waiter)

    def __len__(self) -> int:
        """Number of keys somebody holds."""
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def held(self) -> int:
        """Number of locks held right now."""
        return len(self._entries)

    def waiting(self) -> int:
        """Number of waiters queued for some lock."""
        return self._waiting

    def _release(self, key: str) -> None:
        """Grant ``key`` to its first waiter still waiting, or forget the key."""
        queue = self._entries[key]
        while queue:
            waiter = queue.popleft()
            self._dequeued(waiter)
            if not waiter.future.done():  # else cancelled, and not withdrawn yet
                waiter.granted(Held(self, key))
                return
        del self._entries[key]

    def _take_queued(self, key: str, group: object) -> list[Waiter]:
        queue = self._entries[key]
        taken: list[Waiter] = []
        while queue:
            waiter = queue[0]
            if not waiter.future.done():
                if waiter.group is not group:
                    break
                taken.append(waiter)
            queue.popleft()
            self._dequeued(waiter)
        return taken

    def _dequeued(self, waiter: Waiter) -> None:
        waiter.queued = False
        self._waiting -= 1
        if self._waiting == 0:
            self._deadlines.clear()  # all stale

    def _add_deadline(self, waiter: Waiter) -> None:
        deadlines = self._deadlines
        if len(deadlines) > 2 * self._waiting + _SLACK:
            deadlines[:] = [d for d in deadlines if d[2].queued]
            heapq.heapify(deadlines)
        assert waiter.deadline is not None
        heapq.heappush(deadlines, (waiter.deadline, next(self._order), waiter))
        if waiter.deadline < self._timer_at:
            self._set_timer(waiter.deadline)

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._running_loop().call_at(when, self._expire_overdue)
        self._timer_at = when

    def _expire_overdue(self) -> None:
        """Answer ``LockTimeout`` to every waiter past its deadline; set the timer for the next."""
        self._timer = None
        self._timer_at = float("inf")
        now = self._running_loop().time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or not deadlines[0][2].queued):
            waiter = heapq.heappop(deadlines)[2]
            if waiter.queued:
                self.withdraw(waiter)
                if not waiter.future.done():
                    waiter.expired(LockTimeout(waiter.key, waiter.timeout))
        if deadlines:
            self._set_timer(deadlines[0][0])

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop


class Held:
    """A lock that has been acquired; ``release()`` may be called from any task, once."""

    __slots__ = ("_key", "_registry")

    def __init__(self, registry: LockRegistry, key: str) -> None:
        self._registry: LockRegistry | None = registry
        self._key = key

    def release(self) -> None:
        """Free the lock; the next waiter still waiting gets it at once."""
        registry = self._registry
        if registry is None:
            raise RuntimeError(f"lock {self._key!r} released twice")
        self._registry = None
        registry._release(self._key)

    def take_queued(self, group: object) -> list[Waiter]:
        """The waiters at the front of the queue whose ``group`` is this one, in order.

        They leave the queue: the holder does their work under its own hold. The first
        waiter of another group (or of none) ends the run, so it keeps its turn.
        """
        if self._registry is None:
            raise RuntimeError(f"lock {self._key!r} used after its release")
        return self._registry._take_queued(self._key, group)


LOCKS = web.AppKey("locks", LockRegistry)
