"""Write combining under the per-resource lock.

A request queues its operation for its resource. If nobody leads that resource, the
request becomes its leader: it takes the resource's lock from the registry and applies
*every* operation queued for the resource in one storage call (one read, one write, one
commit shared with other resources' batches). Requests arriving meanwhile queue up behind
it. When the batch has committed, each request in it gets its own outcome, and if more
operations have queued, the lock is handed straight on to the first of them, which leads
the next batch; otherwise the lock is released. So a hot counter costs one statement per
commit, the next batch starts the moment the previous one lands, and every request still
receives exactly the value a one-at-a-time increment in arrival order would have given it.

A batch stays open until storage actually starts it: the leader hands storage an
``OpenBatch``, and storage calls ``take()`` right before the transaction begins. SQLite's
writer first lets the event loop run a few turns (``commit_gather``), so requests already
on their way join the batch instead of waiting a whole commit for the next one.

A queued request that is not taken into a batch within the lock timeout is withdrawn and
answered with ``LockTimeout``; a cancelled one is withdrawn too. Either way its operation
is never applied. Once taken into a batch, an operation is committed or fails with it.

Per-request cost matters here (every write passes through): queued requests share one
expiry timer per combiner instead of a timer each, and a storage call that returns a
future (as SQLite's writer does) is awaited through it directly, without a task per batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from app.errors import LockTimeout
from app.locks import Held, LockRegistry

Op = TypeVar("Op")
Outcome = TypeVar("Outcome")


class WaitObserver(Protocol):
    """Told how long each request waited for its resource, and about each that gave up."""

    def waited(self, kind: str, seconds: float) -> None: ...

    def timed_out(self, kind: str, seconds: float) -> None: ...


class _Lead:
    """Delivered instead of an outcome: "you lead this resource now"."""

    __slots__ = ("held",)

    def __init__(self, held: Held | None) -> None:
        self.held = held  # None: the lock is not held yet, acquire it


class _Pending(Generic[Op]):
    __slots__ = ("claimed", "claimed_at", "deadline", "future", "op")

    def __init__(self, op: Op, future: asyncio.Future[Any], deadline: float) -> None:
        self.op = op
        self.future = future
        self.deadline = deadline  # loop time after which, still queued, it times out
        self.claimed = False  # taken into a batch: will be committed or fail with it
        self.claimed_at = 0.0


class OpenBatch(Generic[Op]):
    """A resource's next batch: its leader's operation, then all queued when storage takes it."""

    __slots__ = ("_pending", "_queue")

    def __init__(self, leader: _Pending[Op], queue: deque[_Pending[Op]]) -> None:
        self._pending = [leader]
        self._queue: deque[_Pending[Op]] | None = queue

    def take(self) -> list[Op]:
        """Close the batch and return its operations in arrival order (once only)."""
        queue = self._queue
        if queue is None:
            raise RuntimeError("batch taken twice")
        self._queue = None
        now = time.perf_counter()
        while queue:
            p = queue.popleft()
            p.claimed = True
            p.claimed_at = now
            self._pending.append(p)
        return [p.op for p in self._pending]

    def requests(self) -> list[_Pending[Op]]:
        """The batch's requests, in order (taking it now if storage never did)."""
        if self._queue is not None:
            self.take()
        return self._pending


# What storage is handed: a list (direct callers, tests) or a combiner's open batch.
Batch = list[Op] | OpenBatch[Op]


def ops_of(ops: Batch[Op]) -> list[Op]:
    """The operations of a batch, taking it if it is still open."""
    return ops if isinstance(ops, list) else ops.take()


class Combiner(Generic[Op, Outcome]):
    """Queues operations per resource and applies each resource's queue under its lock."""

    def __init__(
        self,
        kind: str,
        locks: LockRegistry,
        apply: Callable[[str, OpenBatch[Op]], Awaitable[list[Outcome]]],
        observer: WaitObserver | None = None,
    ) -> None:
        self._kind = kind
        self._locks = locks
        self._apply = apply
        self._observer = observer
        self._queues: dict[str, deque[_Pending[Op]]] = {}
        self._timer: asyncio.TimerHandle | None = None  # fires at the oldest waiter's deadline
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Number of resources being worked on."""
        return len(self._queues)

    def waiting(self) -> int:
        """Number of requests queued and not yet taken into a batch."""
        return sum(len(q) for q in self._queues.values())

    async def submit(self, key: str, op: Op) -> Outcome:
        """Apply ``op`` to resource ``key`` once, in arrival order, and return its outcome."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        started = time.perf_counter()
        queue = self._queues.get(key)
        if queue is None:
            # Nobody works on this resource: lead it.
            me: _Pending[Op] = _Pending(op, loop.create_future(), 0.0)
            queue = self._queues[key] = deque((me,))
            lead = _Lead(None)
        else:
            me = _Pending(op, loop.create_future(), loop.time() + self._locks.timeout)
            queue.append(me)
            if self._timer is None:
                self._timer = loop.call_at(me.deadline, self._expire_overdue)
            try:
                result = await me.future
            except BaseException as e:
                self._abandon(key, me)
                if isinstance(e, LockTimeout):
                    self._report_timeout(started)
                raise
            if not isinstance(result, _Lead):
                # Its wait ended when a leader took it into a batch.
                self._report_wait(me.claimed_at - started)
                outcome: Outcome = result
                return outcome
            lead = result

        held = lead.held
        if held is None:
            try:
                held = await self._locks.acquire(f"{self._kind}:{key}")
            except BaseException as e:
                self._withdraw(key, me)
                self._hand_on(key, None)
                if isinstance(e, LockTimeout):
                    self._report_timeout(started)
                raise
        self._report_wait(time.perf_counter() - started)
        me.future = loop.create_future()
        self._flush(key, held, me)
        try:
            final: Outcome = await me.future
        except asyncio.CancelledError:
            me.future.add_done_callback(_discard)
            raise
        return final

    def _flush(self, key: str, held: Held, leader: _Pending[Op]) -> None:
        """Start the resource's next batch, applied in a task of its own.

        The leader's operation is in it from the start; everyone else queued for the
        resource joins when storage takes the batch (``OpenBatch.take``), right before its
        transaction begins, so requests arriving while the writer gathers still make it.
        The batch's completion callback settles every request and hands the lock on, so
        cancelling the leader can never strand the others or leak the lock.
        """
        queue = self._queues[key]
        queue.remove(leader)  # it is at the front: the lead goes to the first in line
        leader.claimed = True
        leader.claimed_at = time.perf_counter()
        batch = OpenBatch(leader, queue)
        task: asyncio.Future[list[Outcome]]
        try:
            # A future (SQLite's writer) is used as is; a coroutine gets a task.
            task = asyncio.ensure_future(self._apply(key, batch))
        except Exception as e:  # the backend refused synchronously (e.g. shutting down)
            task = asyncio.get_running_loop().create_future()
            task.set_exception(e)
        task.add_done_callback(partial(self._finished, key, held, batch))

    def _report_wait(self, seconds: float) -> None:
        if self._observer is not None:
            self._observer.waited(self._kind, seconds)

    def _report_timeout(self, started: float) -> None:
        if self._observer is not None:
            self._observer.timed_out(self._kind, time.perf_counter() - started)

    def _finished(
        self, key: str, held: Held, batch: OpenBatch[Op], task: asyncio.Future[list[Outcome]]
    ) -> None:
        _settle(batch.requests(), task)
        self._hand_on(key, held)

    def _hand_on(self, key: str, held: Held | None) -> None:
        """Give the lead (and the lock, if held) to the first queued request, or let go."""
        queue = self._queues.get(key)
        if queue:
            queue[0].future.set_result(_Lead(held))
            return
        self._queues.pop(key, None)
        if held is not None:
            held.release()

    def _expire_overdue(self) -> None:
        """Answer 503 to every request still queued past its deadline; re-arm for the next.

        Queues are first-in first-out and every waiter gets the same timeout, so the
        overdue ones are at the front of their queues and the next deadline is the
        earliest front. The one in front may already hold the lead (its future is done):
        it is about to take the queue into a batch and is left alone.
        """
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_deadline: float | None = None
        for key, queue in list(self._queues.items()):
            for me in list(queue):
                if me.future.done() or me.deadline == 0.0:
                    continue  # leading or about to lead
                if me.deadline > now:
                    if next_deadline is None or me.deadline < next_deadline:
                        next_deadline = me.deadline
                    break
                self._withdraw(key, me)
                me.future.set_exception(LockTimeout(f"{self._kind}:{key}", self._locks.timeout))
        if next_deadline is not None:
            self._timer = loop.call_at(next_deadline, self._expire_overdue)

    def _abandon(self, key: str, me: _Pending[Op]) -> None:
        """A queued request was cancelled: withdraw it, passing on a lead it was handed."""
        fut = me.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            result = fut.result()
            if isinstance(result, _Lead):
                self._withdraw(key, me)
                self._hand_on(key, result.held)
                return
        if not me.claimed:
            self._withdraw(key, me)

    def _withdraw(self, key: str, me: _Pending[Op]) -> None:
        queue = self._queues.get(key)
        if queue is not None and me in queue:
            queue.remove(me)


def _discard(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(batch: list[_Pending[Op]], task: asyncio.Future[list[Outcome]]) -> None:
    if task.cancelled():
        for p in batch:
            p.future.cancel()
        return
    error = task.exception()
    if error is not None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)
        return
    for p, outcome in zip(batch, task.result(), strict=True):
        if not p.future.done():
            p.future.set_result(outcome)
