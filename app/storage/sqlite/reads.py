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
from collections.abc import Awaitable, Callable
from typing import Any

from app.storage.batching import BatchQueue, Outcome

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


class BatchedReader(BatchQueue[Query]):
    """Queues read queries and runs every query waiting at once in a single hop."""

    def __init__(self, hop: Hop, max_batch: int) -> None:
        super().__init__(max_batch, "lockstep-sqlite-reader")
        self._hop = hop
        self.hops = 0  # thread hops made, for tests

    def fetch(self, sql: str, params: tuple[Any, ...]) -> asyncio.Future[list[Any]]:
        """The query's rows, once its batch has run."""
        return self.submit((sql, params))

    async def _run_batch(self, items: list[Query]) -> list[Outcome]:
        try:
            results = await self._hop(_run_queries, items)
        except Exception as e:  # e.g. aiosqlite's ValueError once the reader is closed
            results = [e] * len(items)
        self.hops += 1
        return [(not isinstance(r, BaseException), r) for r in results]
