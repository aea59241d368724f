"""This worker's queued acquires, each woken only when a lock is handed to it.

A lease that ends is handed, in its own commit, to the first live waiter, and the change-log
entry of that commit names the waiter (``"waiter": <seq>``). A queued request waits on its
own event here: the step that hands the lock over wakes it at once when it ran in this
worker, and the worker's event hub wakes it when it reads the entry written by another
worker or host. Every other waiter of the lock sleeps on until its next check-in, so a
hand-over costs one wake-up, not one per waiter.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from app.changes import Change


class HandOvers:
    """Events of the waiting acquires by lock name and waiter ``seq``."""

    def __init__(self) -> None:
        self._waiting: dict[str, dict[int, asyncio.Event]] = {}
        self.closed = False

    def add(self, name: str, seq: int) -> asyncio.Event:
        """The event set once lock ``name`` is handed to waiter ``seq`` (or on shutdown)."""
        event = asyncio.Event()
        if self.closed:
            event.set()
        self._waiting.setdefault(name, {})[seq] = event
        return event

    def discard(self, name: str, seq: int) -> None:
        waiters = self._waiting.get(name)
        if waiters is not None:
            waiters.pop(seq, None)
            if not waiters:
                del self._waiting[name]

    def waiting(self, name: str) -> int:
        """How many acquires of lock ``name`` wait in this worker."""
        return len(self._waiting.get(name, ()))

    def handed(self, name: str, seq: int) -> None:
        """Lock ``name`` was handed to waiter ``seq``: wake it if it waits in this worker."""
        event = self._waiting.get(name, {}).get(seq)
        if event is not None:
            event.set()

    def seen(self, change: Change) -> None:
        """A lock's change-log entry, as the event hub reads it."""
        if change.key not in self._waiting or change.value is None:
            return
        seq = msgspec.json.decode(change.value).get("waiter")
        if isinstance(seq, int):
            self.handed(change.key, seq)

    def close(self) -> None:
        """Shutting down: wake every waiter (each answers) and any that comes later."""
        self.closed = True
        for waiters in self._waiting.values():
            for event in waiters.values():
                event.set()


HAND_OVERS = web.AppKey("hand_overs", HandOvers)
