"""The workers' turn at writing to SQLite, waited for at most the busy timeout.

Workers take turns through an exclusive ``flock`` on a file beside the database before
each write transaction (``app.storage.sqlite.transaction.run_batch`` says why: the kernel wakes the
next writer the moment the holder lets go). ``flock`` has no timeout, and a holder that
is stopped but not dead (SIGSTOP, a debugger, a frozen VM) would keep every other
worker's writes waiting for as long as it stays stopped.

So the loop gives the database thread's call ``LOCKSTEP_BUSY_TIMEOUT_MS`` to get the turn.
The call carries a ``TurnClaim``: once it has the turn, the thread claims the transaction
for itself before running it; once the time is up, the loop abandons the claim and answers
503. Exactly one of the two wins the claim's lock, so a transaction either runs (and its
answer is awaited however long it takes) or never does, even when the turn comes a moment
later: the thread then lets the turn go at once. While an abandoned call still waits in
``flock``, the worker's write path is stuck: new batches are refused at once (503) instead
of queueing behind it, and ``/readyz`` says so, until the call comes back.

The blocking ``flock`` stays on the database thread itself, as before: the common,
contended-but-moving case costs one kernel wake-up and no hand-off between threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from app.errors import StorageUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TurnTimeout(StorageUnavailable):
    """Another process held the write turn for longer than the busy timeout."""


class _Abandoned(Exception):
    """The loop gave up on this call before it got the turn; nothing ran."""


class TurnClaim:
    """Who decides a call's fate: its thread, having got the turn, or the loop, out of time."""

    __slots__ = ("_lock", "_state", "wait")

    def __init__(self, wait: bool = True) -> None:
        self._lock = threading.Lock()
        self._state = 0  # 0: waiting for the turn, 1: running, 2: abandoned
        self.wait = wait  # False: a busy timeout of 0, take the turn only if it is free

    def start(self) -> bool:
        """On the database thread, holding the turn: run (True) unless abandoned already."""
        with self._lock:
            if self._state == 2:
                return False
            self._state = 1
            return True

    def abandon(self) -> bool:
        """On the loop, out of time: True if the call will now never run."""
        with self._lock:
            if self._state == 1:
                return False
            self._state = 2
            return True


@contextlib.contextmanager
def turn(fd: int, claim: TurnClaim) -> Iterator[None]:
    """Hold the turn for the block, on the database thread; nothing runs if ``claim`` lost."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if claim.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TurnTimeout("database: another worker holds the write turn") from None
    try:
        if not claim.start():
            raise _Abandoned
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class TurnKeeper:
    """This worker's waits for the turn: bounded, and remembered while one is stuck."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._stuck: asyncio.Future[Any] | None = None

    @property
    def stalled(self) -> str | None:
        """Why writes cannot progress now (an abandoned call still waits for the turn)."""
        if self._stuck is None:
            return None
        if not self._stuck.done():
            return (
                f"database: another worker has held the write turn for more than"
                f" {self.timeout:g} s (LOCKSTEP_BUSY_TIMEOUT_MS); nothing was changed"
            )
        self._stuck = None
        logger.warning("writes progress again: the write turn came free")
        return None

    async def run(self, call: Callable[[TurnClaim], Awaitable[T]]) -> T:
        """``call(claim)``'s result, or ``TurnTimeout`` if it did not get the turn in time."""
        stalled = self.stalled
        if stalled is not None:
            raise TurnTimeout(stalled)
        if self.timeout <= 0:  # like SQLite's busy_timeout 0: no waiting at all
            return await call(TurnClaim(wait=False))
        claim = TurnClaim()
        pending = asyncio.ensure_future(call(claim))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.timeout)
        except TimeoutError:
            if not claim.abandon():
                return await pending  # it got the turn just now and runs: its answer counts
        self._stuck = pending
        pending.add_done_callback(_retrieve)
        logger.warning(
            "writes are stalled: another worker has held the write turn for more than %g s",
            self.timeout,
        )
        raise TurnTimeout(self.stalled or "database: the write turn was not free in time")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # _Abandoned, once the turn comes free: nothing to report
