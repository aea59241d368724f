"""Write combining under the per-resource lock.

A request queues its operation for its resource. The first request for a resource nobody
works on takes the resource's lock from the registry and opens its first batch; storage
then applies *every* operation queued for the resource by the time it takes the batch in
one call (one read, one write, one commit shared with other resources' batches). Requests
arriving meanwhile queue up. When the batch has committed, each request in it gets its
own outcome, and if more operations have queued, the next batch starts at once with the
lock still held; otherwise the lock is released. So a hot counter costs one statement per
commit, the next batch starts the moment the previous one lands, and every request still
receives exactly the value a one-at-a-time increment in arrival order would have given it.

The lock is held for the resource's batches, not by one request's task: settling a batch
and starting the next happen in the batch's completion callback, so a request that is
cancelled (its client went away) can strand nobody and leak no lock.

A batch stays open until storage actually starts it: storage is handed an ``OpenBatch``
and calls ``take()`` right before the transaction begins. Both backends' writers first let
the event loop run a few turns (``commit_gather``), so requests already on their way join the
batch instead of waiting a whole commit for the next one.

A queued request that is not taken into a batch within the lock timeout is withdrawn and
answered with ``LockTimeout``; a cancelled one is withdrawn too. Either way its operation
is never applied. Once taken into a batch, an operation is committed or fails with it.

Per-request cost matters here (every write passes through): a request costs one future;
a free lock is taken without suspending; queued requests share one expiry timer per
combiner; and SQLite's writer settles a batch itself (``OpenBatch.set_result``), with no
future, callback or task per batch. Other backends return an awaitable instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from app.errors import LockTimeout
from app.locks import Held, LockRegistry

Op = TypeVar("Op")
Outcome = TypeVar("Outcome")


class WaitObserver(Protocol):
    """Told how long each request waited for its resource, and about each that gave up."""

    def waited(self, kind: str, seconds: float) -> None: ...

    def timed_out(self, kind: str, seconds: float) -> None: ...


class _Pending(Generic[Op]):
    __slots__ = ("claimed", "claimed_at", "deadline", "future", "op")

    def __init__(self, op: Op, future: asyncio.Future[Any], deadline: float) -> None:
        self.op = op
        self.future = future
        self.deadline = deadline  # loop time after which, still queued, it times out
        self.claimed = False  # taken into a batch: will be committed or fail with it
        self.claimed_at = 0.0


class OpenBatch(Generic[Op]):
    """A resource's next batch: its first operation, then all queued when storage takes it.

    Storage settles it like a future, with ``set_result`` (one outcome per operation, in
    order) or ``set_exception``; either answers every request in it at once and lets the
    combiner start the resource's next batch.
    """

    __slots__ = ("_combiner", "_held", "_key", "_pending", "_queue", "_settled")

    def __init__(
        self,
        combiner: Combiner[Op, Any],
        key: str,
        held: Held,
        first: _Pending[Op],
        queue: deque[_Pending[Op]],
    ) -> None:
        self._combiner = combiner
        self._key = key
        self._held = held
        self._pending = [first]
        self._queue: deque[_Pending[Op]] | None = queue
        self._settled = False

    def take(self) -> list[Op]:
        """Close the batch and return its operations in arrival order (once only)."""
        queue = self._queue
        if queue is None:
            raise RuntimeError("batch taken twice")
        self._queue = None
        now = time.perf_counter()
        while queue:
            p = queue.popleft()
            if p.future.done():  # cancelled or timed out, and not yet withdrawn
                continue
            p.claimed = True
            p.claimed_at = now
            self._pending.append(p)
        return [p.op for p in self._pending]

    def requests(self) -> list[_Pending[Op]]:
        """The batch's requests, in order (taking it now if storage never did)."""
        if self._queue is not None:
            self.take()
        return self._pending

    def done(self) -> bool:
        """Whether the batch has been settled."""
        return self._settled

    def set_result(self, outcomes: list[Any]) -> None:
        """The batch committed: answer each request with its own outcome."""
        self._settle()
        for p, outcome in zip(self.requests(), outcomes, strict=True):
            if not p.future.done():
                p.future.set_result(outcome)
        self._combiner._next_batch(self._key, self._held)

    def set_exception(self, error: BaseException) -> None:
        """The batch failed as a whole: every request in it gets ``error``."""
        self._settle()
        for p in self.requests():
            if not p.future.done():
                p.future.set_exception(error)
        self._combiner._next_batch(self._key, self._held)

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("batch settled twice")
        self._settled = True

    def _from_future(self, done: asyncio.Future[list[Any]]) -> None:
        """Settle from a backend's future or task (a cancelled one cancels every request)."""
        if done.cancelled():
            self._settle()
            for p in self.requests():
                p.future.cancel()
            self._combiner._next_batch(self._key, self._held)
        elif (error := done.exception()) is not None:
            self.set_exception(error)
        else:
            self.set_result(done.result())


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
        apply: Callable[[str, OpenBatch[Op]], Awaitable[list[Outcome]] | None],
        observer: WaitObserver | None = None,
    ) -> None:
        self._kind = kind
        self._locks = locks
        self._apply = apply
        self._observer = observer
        # A resource is here while its lock is held for it (a batch is under way) or
        # being waited for; its deque holds the requests not yet taken into a batch.
        self._queues: dict[str, deque[_Pending[Op]]] = {}
        self._acquiring: set[asyncio.Task[None]] = set()
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
            # Nobody works on this resource. Its lock is normally free, and then taken at
            # once: this request's operation opens the resource's first batch.
            queue = self._queues[key] = deque()
            held = self._locks.try_acquire(f"{self._kind}:{key}")
            if held is not None:
                me: _Pending[Op] = _Pending(op, loop.create_future(), 0.0)
                me.claimed = True
                me.claimed_at = started
                self._start(key, held, me, queue)
            else:  # held by someone outside this combiner: queue, and wait for it
                me = self._enqueue(queue, op, loop)
                task = loop.create_task(self._acquire_for(key))
                self._acquiring.add(task)
                task.add_done_callback(self._acquiring.discard)
        else:
            me = self._enqueue(queue, op, loop)
        try:
            outcome: Outcome = await me.future
        except BaseException as e:
            if not me.claimed:
                self._withdraw(key, me)
            elif me.future.done() and not me.future.cancelled():
                me.future.exception()  # retrieved: its task was cancelled, not its batch
            if isinstance(e, LockTimeout):
                self._report_timeout(started)
            raise
        self._report_wait(me.claimed_at - started)
        return outcome

    def _enqueue(
        self, queue: deque[_Pending[Op]], op: Op, loop: asyncio.AbstractEventLoop
    ) -> _Pending[Op]:
        me = _Pending(op, loop.create_future(), loop.time() + self._locks.timeout)
        queue.append(me)
        if self._timer is None:
            self._timer = loop.call_at(me.deadline, self._expire_overdue)
        return me

    def _start(self, key: str, held: Held, first: _Pending[Op], queue: deque[_Pending[Op]]) -> None:
        """Hand storage the resource's next batch; settling it goes on to the next.

        ``first`` is in the batch from the start; everyone else queued for the resource
        joins when storage takes the batch (``OpenBatch.take``), right before its
        transaction begins, so requests arriving while the writer gathers still make it.
        Settling the batch answers every request and starts the next batch (the lock stays
        held) or releases the lock, so no request's task is needed for either: a cancelled
        request can never strand the others or leak the lock.
        """
        batch = OpenBatch(self, key, held, first, queue)
        try:
            pending = self._apply(key, batch)
        except Exception as e:  # the backend refused synchronously (e.g. shutting down)
            batch.set_exception(e)
            return
        if pending is not None:  # else storage settles the batch itself (SQLite's writer)
            asyncio.ensure_future(pending).add_done_callback(batch._from_future)

    def _next_batch(self, key: str, held: Held) -> None:
        """Start the next batch with the first queued request, or let the resource go."""
        queue = self._queues.get(key)
        while queue:
            first = queue.popleft()
            if first.future.done():  # cancelled or timed out, and not yet withdrawn
                continue
            first.claimed = True
            first.claimed_at = time.perf_counter()
            self._start(key, held, first, queue)
            return
        self._queues.pop(key, None)
        held.release()

    async def _acquire_for(self, key: str) -> None:
        """Wait for a lock somebody else holds, then start the resource's first batch."""
        name = f"{self._kind}:{key}"
        while True:
            try:
                held = await self._locks.acquire(name)
            except LockTimeout:
                if self._queues.get(key):
                    continue  # requests queued later are still within their own timeout
                self._queues.pop(key, None)
                return
            except BaseException:
                queue = self._queues.pop(key, None)
                for p in queue or ():
                    if not p.future.done():
                        p.future.cancel()
                raise
            self._next_batch(key, held)
            return

    def _report_wait(self, seconds: float) -> None:
        if self._observer is not None:
            self._observer.waited(self._kind, seconds)

    def _report_timeout(self, started: float) -> None:
        if self._observer is not None:
            self._observer.timed_out(self._kind, time.perf_counter() - started)

    def _expire_overdue(self) -> None:
        """Answer 503 to every request still queued past its deadline; re-arm for the next.

        Queues are first-in first-out and every waiter gets the same timeout, so the
        overdue ones are at the front of their queues and the next deadline is the
        earliest front.
        """
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        next_deadline: float | None = None
        for key, queue in list(self._queues.items()):
            for me in list(queue):
                if me.deadline > now:
                    if next_deadline is None or me.deadline < next_deadline:
                        next_deadline = me.deadline
                    break
                queue.remove(me)
                if not me.future.done():
                    me.future.set_exception(LockTimeout(f"{self._kind}:{key}", self._locks.timeout))
        if next_deadline is not None:
            self._timer = self._loop.call_at(next_deadline, self._expire_overdue)

    def _withdraw(self, key: str, me: _Pending[Op]) -> None:
        queue = self._queues.get(key)
        if queue is not None and me in queue:
            queue.remove(me)
