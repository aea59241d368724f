"""Write combining under the per-resource lock.

A request asks the lock registry for its resource's lock, carrying its operation. If the
lock is free, the request takes it and its operation opens the resource's first batch;
otherwise the request waits in the lock's queue. Storage applies *every* operation
queued for the resource by the time it takes the batch in one call (one read, one write,
one commit shared with other resources' batches): the batch takes the run of this
combiner's requests at the front of the lock's queue (``Held.take_queued``). When the
batch has committed, each request in it gets its own outcome and the lock is released;
if a request of this combiner is next in the queue, the registry grants it the lock and
its operation opens the next batch at once. So a hot counter costs one statement per
commit, the next batch starts the moment the previous one lands, and every request still
receives exactly the value a one-at-a-time increment in arrival order would have given it.

The lock is held for the resource's batches, not by one request's task: settling a batch
releases the lock, and the registry starts the next batch in that same call, so a request
that is cancelled (its client went away) can strand nobody and leak no lock.

A batch stays open until storage actually starts it: storage is handed an ``OpenBatch``
and calls ``take()`` right before the transaction begins. Both backends' writers first let
the event loop run a few turns (``commit_gather``), so requests already on their way join the
batch instead of waiting a whole commit for the next one.

A queued request that is not taken into a batch within the lock timeout is answered with
``LockTimeout`` by the registry; a cancelled one is withdrawn from the queue. Either way
its operation is never applied. Once taken into a batch, an operation is committed or
fails with it.

Per-request cost matters here (every write passes through): a request costs one future
and one waiter; a free lock is taken without suspending; and a batch costs the future
storage returns and one callback on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from app.errors import LockTimeout
from app.locks import Held, LockRegistry, Waiter

Op = TypeVar("Op")
Outcome = TypeVar("Outcome")


class WaitObserver(Protocol):
    """Told how long each request waited for its resource, and about each that gave up."""

    def waited(self, kind: str, seconds: float) -> None: ...

    def timed_out(self, kind: str, seconds: float) -> None: ...


class _Request(Waiter, Generic[Op]):
    """One request's operation, waiting for its resource's lock or in a batch."""

    __slots__ = ("claimed", "claimed_at", "combiner", "name", "op")

    def __init__(
        self, combiner: Combiner[Op, Any], name: str, op: Op, future: asyncio.Future[Any]
    ) -> None:
        super().__init__(combiner._prefix + name, future, combiner._timeout, group=combiner)
        self.combiner = combiner
        self.name = name
        self.op = op
        self.claimed = False  # taken into a batch: will be committed or fail with it
        self.claimed_at = 0.0

    def granted(self, held: Held) -> None:
        # The lock passed to this request: its operation opens the resource's next batch.
        self.claimed = True
        self.claimed_at = time.perf_counter()
        self.combiner._start(held, self)


class OpenBatch(Generic[Op]):
    """A resource's next batch: its first operation, then all queued when storage takes it.

    Storage takes it (``ops_of``) right before its transaction begins. The combiner settles
    it from storage's awaitable, with ``set_result`` (one outcome per operation, in order)
    or ``set_exception``; either answers every request in it at once and releases the
    resource's lock to whoever waits next.
    """

    __slots__ = ("_group", "_held", "_open", "_requests", "_settled")

    def __init__(self, group: object, held: Held, first: _Request[Op]) -> None:
        self._group = group
        self._held = held
        self._requests = [first]
        self._open = True
        self._settled = False

    def take(self) -> list[Op]:
        """Close the batch and return its operations in arrival order (once only)."""
        if not self._open:
            raise RuntimeError("batch taken twice")
        self._open = False
        now = time.perf_counter()
        joining = cast("list[_Request[Op]]", self._held.take_queued(self._group))
        for request in joining:
            request.claimed = True
            request.claimed_at = now
        self._requests += joining
        return [r.op for r in self._requests]

    def requests(self) -> list[_Request[Op]]:
        """The batch's requests, in order (taking it now if storage never did)."""
        if self._open:
            self.take()
        return self._requests

    def set_result(self, outcomes: list[Any]) -> None:
        """The batch committed: answer each request with its own outcome."""
        self._settle()
        for r, outcome in zip(self.requests(), outcomes, strict=True):
            if not r.future.done():
                r.future.set_result(outcome)
        self._held.release()

    def set_exception(self, error: BaseException) -> None:
        """The batch failed as a whole: every request in it gets ``error``."""
        self._settle()
        for r in self.requests():
            if not r.future.done():
                r.future.set_exception(error)
        self._held.release()

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("batch settled twice")
        self._settled = True

    def _from_future(self, done: asyncio.Future[list[Any]]) -> None:
        """Settle from a backend's future or task (a cancelled one cancels every request)."""
        if done.cancelled():
            self._settle()
            for r in self.requests():
                r.future.cancel()
            self._held.release()
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
    """Applies each resource's queued operations in batches under the resource's lock."""

    def __init__(
        self,
        kind: str,
        locks: LockRegistry,
        apply: Callable[[str, OpenBatch[Op]], Awaitable[list[Outcome]]],
        observer: WaitObserver | None = None,
    ) -> None:
        self._kind = kind
        self._prefix = f"{kind}:"
        self._locks = locks
        self._timeout = locks.timeout
        self._apply = apply
        self._observer = observer
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, name: str, op: Op) -> Outcome:
        """Apply ``op`` to resource ``name`` once, in arrival order, and return its outcome."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        started = time.perf_counter()
        me = _Request(self, name, op, loop.create_future())
        held = self._locks.take_or_queue(me)
        if held is not None:  # nobody works on the resource: this op opens its first batch
            me.claimed = True
            me.claimed_at = started
            self._start(held, me)
        try:
            outcome: Outcome = await me.future
        except BaseException as e:
            if not me.claimed:
                self._locks.withdraw(me)
            elif me.future.done() and not me.future.cancelled():
                me.future.exception()  # retrieved: its task was cancelled, not its batch
            if isinstance(e, LockTimeout):
                self._report_timeout(started)
            raise
        self._report_wait(me.claimed_at - started)
        return outcome

    def _start(self, held: Held, first: _Request[Op]) -> None:
        """Hand storage the resource's next batch; settling it releases the lock.

        ``first`` is in the batch from the start; this combiner's requests queued behind it
        join when storage takes the batch (``OpenBatch.take``), right before its
        transaction begins, so requests arriving while the writer gathers still make it.
        """
        batch = OpenBatch(self, held, first)
        try:
            pending = self._apply(first.name, batch)
        except Exception as e:  # the backend refused synchronously (e.g. shutting down)
            batch.set_exception(e)
            return
        asyncio.ensure_future(pending).add_done_callback(batch._from_future)

    def _report_wait(self, seconds: float) -> None:
        if self._observer is not None:
            self._observer.waited(self._kind, seconds)

    def _report_timeout(self, started: float) -> None:
        if self._observer is not None:
            self._observer.timed_out(self._kind, time.perf_counter() - started)
