"""The lock registry: one FIFO asyncio lock per resource key, alive only while in use.

An entry counts the tasks that hold or wait for its lock and is deleted when that count
drops to zero, so touching a million distinct names leaves the registry empty again.
These locks serialize work inside one worker process only; correctness across gunicorn
workers comes from the database (see ``app.storage``).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Protocol

from app.errors import LockTimeout


class LockObserver(Protocol):
    """Told about every acquisition's wait and every timeout (metrics, request logs)."""

    def waited(self, key: str, seconds: float) -> None: ...

    def timed_out(self, key: str, seconds: float) -> None: ...


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        # asyncio.Lock serves waiters first-in first-out and hands a lock released
        # during a waiter's cancellation on to the next waiter.
        self.lock = asyncio.Lock()
        self.users = 0


class LockRegistry:
    """Per-resource exclusive locks: ``async with registry.hold(key): ...``."""

    def __init__(self, timeout: float, observer: LockObserver | None = None) -> None:
        self.timeout = timeout
        self.observer = observer
        self._entries: dict[str, _Entry] = {}

    def hold(self, key: str, timeout: float | None = None) -> _Hold:
        """Exclusive access to ``key``; ``LockTimeout`` if not had within ``timeout`` s."""
        return _Hold(self, key, self.timeout if timeout is None else timeout)

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


class _Hold:
    """One task's claim on one key; an async context manager."""

    __slots__ = ("_entry", "_key", "_registry", "_timeout")

    def __init__(self, registry: LockRegistry, key: str, timeout: float) -> None:
        self._registry = registry
        self._key = key
        self._timeout = timeout
        self._entry: _Entry | None = None

    async def __aenter__(self) -> None:
        registry = self._registry
        entry = registry._enter(self._key)
        started = 0.0
        try:
            if entry.lock.locked():
                started = time.perf_counter()
                async with asyncio.timeout(self._timeout):
                    await entry.lock.acquire()
            else:
                await entry.lock.acquire()
        except TimeoutError:
            registry._leave(self._key, entry)
            if registry.observer is not None:
                registry.observer.timed_out(self._key, time.perf_counter() - started)
            raise LockTimeout(self._key, self._timeout) from None
        except BaseException:
            registry._leave(self._key, entry)
            raise
        self._entry = entry
        if registry.observer is not None:
            # An uncontended acquisition counts as a zero wait without reading the clock.
            registry.observer.waited(self._key, time.perf_counter() - started if started else 0.0)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        assert entry is not None, "released a lock that was never acquired"
        self._entry = None
        entry.lock.release()
        self._registry._leave(self._key, entry)
