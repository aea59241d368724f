"""Batched reads for the SQLite backend: concurrent queries share one thread hop.

A hop into aiosqlite's thread costs more than a small indexed read itself, so under load
the reads waiting at the same moment are run back to back in one hop, each in its own
autocommit statement, exactly as if it had been sent alone: it sees everything committed
before it ran, and a failing query raises its own error (for the caller to translate)
and fails only its own request.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from app.errors import StorageUnavailable

Query = tuple[str, tuple[Any, ...]]
# Runs a function on the reader connection's own thread, in one hop.
Hop = Callable[
    [Callable[[sqlite3.Connection, list[Query]], list[Any]], list[Query]], Awaitable[Any]
]


def _run_queries(conn: sqlite3.Connection, queries: list[Query]) -> list[Any]:
    """Each query's rows, or the exception it raised."""
    results: list[Any] = []
    for sql, params in queries:
        try:
            results.append(conn.execute(sql, params).fetchall())
        except sqlite3.Error as e:
            results.append(e)
    return results


class BatchedReader:
    """Queues read queries and runs every query waiting at once in a single hop."""

    def __init__(self, hop: Hop, max_batch: int) -> None:
        self._hop = hop
        self._max_batch = max_batch
        self._queue: deque[tuple[Query, asyncio.Future[list[Any]]]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="lockstep-sqlite-reader")
        self.hops = 0  # thread hops made, for tests

    def fetch(self, sql: str, params: tuple[Any, ...]) -> asyncio.Future[list[Any]]:
        """The query's rows, once its batch has run."""
        if self._closing:
            raise StorageUnavailable("shutting down")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(((sql, params), fut))
        self._wakeup.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            size = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
            try:
                results = await self._hop(_run_queries, [q for q, _ in batch])
            except Exception as e:  # e.g. aiosqlite's ValueError once the reader is closed
                results = [e] * len(batch)
            self.hops += 1
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        """Answer every query already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
