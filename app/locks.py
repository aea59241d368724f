"""The lock registry: one FIFO asyncio lock per resource key, alive only while in use.

An entry counts the tasks that hold or wait for its lock and is deleted when that count
drops to zero, so touching a million distinct names leaves the registry empty again.
These locks serialize work inside one worker process only; correctness across gunicorn
workers comes from the database (see ``app.storage``).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from app.errors import LockTimeout


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        # asyncio.Lock serves waiters first-in first-out and hands a lock released
        # during a waiter's cancellation on to the next waiter.
        self.lock = asyncio.Lock()
        self.users = 0


class LockRegistry:
    """Per-resource exclusive locks: ``async with registry.hold(key): ...``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._entries: dict[str, _Entry] = {}

    def hold(self, key: str, timeout: float | None = None) -> _Hold:
        """Exclusive access to ``key``; ``LockTimeout`` if not had within ``timeout`` s."""
        return _Hold(self, key, self.timeout if timeout is None else timeout)

    async def acquire(self, key: str, max_wait: float | None = None) -> Held:
        """Acquire ``key``'s lock for an owner that may hand it on; ``Held.release()`` frees it."""
        limit = self.timeout if max_wait is None else max_wait
        entry = self._enter(key)
        try:
            if entry.lock.locked():
                async with asyncio.timeout(limit):
                    await entry.lock.acquire()
            else:
                await entry.lock.acquire()
        except TimeoutError:
            self._leave(key, entry)
            raise LockTimeout(key, limit) from None
        except BaseException:
            self._leave(key, entry)
            raise
        return Held(self, key, entry)

    def try_acquire(self, key: str) -> Held | None:
        """``key``'s lock at once if nobody holds or waits for it, else None; never waits."""
        if key in self._entries:
            return None
        entry = self._enter(key)
        _take_free(entry.lock)
        return Held(self, key, entry)

    def __len__(self) -> int:
        """Number of keys somebody holds or waits for."""
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def held(self) -> int:
        """Number of locks some task holds right now."""
        return sum(e.lock.locked() for e in self._entries.values())

    def waiting(self) -> int:
        """Number of tasks waiting for some lock (not holding one)."""
        return sum(e.users - e.lock.locked() for e in self._entries.values())

    def _enter(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        return entry

    def _leave(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]


def _take_free(lock: asyncio.Lock) -> None:
    """Acquire a lock nobody holds or waits for, without a trip through the event loop.

    ``Lock.acquire()`` only suspends when it has to wait; on a free lock the coroutine
    finishes on its first step, so it is run here by hand.
    """
    step = lock.acquire()
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("a free lock asked its taker to wait")


class Held:
    """A lock that has been acquired; ``release()`` may be called from any task, once."""

    __slots__ = ("_entry", "_key", "_registry")

    def __init__(self, registry: LockRegistry, key: str, entry: _Entry) -> None:
        self._registry = registry
        self._key = key
        self._entry: _Entry | None = entry

    def release(self) -> None:
        entry = self._entry
        if entry is None:
            raise RuntimeError(f"lock {self._key!r} released twice")
        self._entry = None
        entry.lock.release()
        self._registry._leave(self._key, entry)


class _Hold:
    """One task's claim on one key; an async context manager."""

    __slots__ = ("_held", "_key", "_registry", "_timeout")

    def __init__(self, registry: LockRegistry, key: str, timeout: float) -> None:
        self._registry = registry
        self._key = key
        self._timeout = timeout
        self._held: Held | None = None

    async def __aenter__(self) -> None:
        self._held = await self._registry.acquire(self._key, self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._held
        assert held is not None, "released a lock that was never acquired"
        self._held = None
        held.release()
