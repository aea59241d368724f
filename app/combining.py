"""Write combining under the per-resource lock.

A request queues its operation for its resource, then takes the resource's lock from the
registry. Whoever holds the lock takes every operation queued for that resource so far and
applies them in one storage call (one read, one write, one commit shared with other
resources' batches), then each request gets its own outcome. While one batch commits, the
next requests pile up behind the lock and go out together in the following batch, so a hot
counter costs one statement per commit instead of one per request, and every request still
receives exactly the value a one-at-a-time increment would have given it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from app.errors import LockTimeout
from app.locks import LockRegistry

Op = TypeVar("Op")
Outcome = TypeVar("Outcome")


class _Pending(Generic[Op, Outcome]):
    __slots__ = ("future", "op")

    def __init__(self, op: Op, future: asyncio.Future[Outcome]) -> None:
        self.op = op
        self.future = future


class Combiner(Generic[Op, Outcome]):
    """Queues operations per resource and applies each resource's queue under its lock."""

    def __init__(
        self,
        kind: str,
        locks: LockRegistry,
        apply: Callable[[str, list[Op]], Awaitable[list[Outcome]]],
    ) -> None:
        self._kind = kind
        self._locks = locks
        self._apply = apply
        self._queues: dict[str, list[_Pending[Op, Outcome]]] = {}

    async def submit(self, key: str, op: Op) -> Outcome:
        """Apply ``op`` to resource ``key`` once, in arrival order, and return its outcome."""
        me = _Pending(op, asyncio.get_running_loop().create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
        queue.append(me)
        try:
            async with self._locks.hold(f"{self._kind}:{key}"):
                if not me.future.done():
                    await self._flush(key)
        except LockTimeout:
            # Withdraw the operation so it is never applied, unless a holder has already
            # taken it: then it is being committed right now and its outcome stands.
            if self._withdraw(key, me):
                raise
            outcome: Outcome = await me.future
            return outcome
        except BaseException:
            if not self._withdraw(key, me):
                # Taken by a holder: its outcome (often the very error being raised, when
                # this request was the holder) is never read, so mark it as seen.
                if me.future.done():
                    _discard(me.future)
                else:
                    me.future.add_done_callback(_discard)
            raise
        result: Outcome = me.future.result()
        return result

    def _withdraw(self, key: str, me: _Pending[Op, Outcome]) -> bool:
        queue = self._queues.get(key)
        if queue is None or me not in queue:
            return False
        queue.remove(me)
        if not queue:
            del self._queues[key]
        return True

    async def _flush(self, key: str) -> None:
        batch = self._queues.pop(key)
        # The batch is applied in a task of its own, so that cancelling the lock holder
        # can never strand the other requests in it without an outcome.
        task = asyncio.ensure_future(self._apply(key, [p.op for p in batch]))
        task.add_done_callback(lambda t: _settle(batch, t))
        await asyncio.shield(task)

    def __len__(self) -> int:
        """Number of resources with operations waiting."""
        return len(self._queues)


def _discard(future: asyncio.Future[Outcome]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(batch: list[_Pending[Op, Outcome]], task: asyncio.Future[list[Outcome]]) -> None:
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
