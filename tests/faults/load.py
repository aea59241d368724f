"""Load helpers for the fault-injection tests: bounded concurrent requests, tallied."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# One request: returns (status, decoded JSON body or None).
Send = Callable[[aiohttp.ClientSession, int], Awaitable[tuple[int, Any]]]


@dataclass
class Tally:
    """What the clients saw."""

    answers: dict[int, tuple[int, Any]] = field(default_factory=dict)  # request index → answer
    errors: int = 0  # requests that got no HTTP answer (connection refused, reset, …)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    threshold: int = 0

    def statuses(self) -> Counter[int]:
        return Counter(status for status, _ in self.answers.values())

    def ok(self) -> list[Any]:
        return [body for status, body in self.answers.values() if 200 <= status < 300]


async def run_load(send: Send, total: int, concurrency: int, tally: Tally) -> Tally:
    """Send ``total`` requests, ``concurrency`` at a time, each on a fresh connection.

    Fresh connections spread the requests over gunicorn's workers. ``tally.answered`` is
    set once ``tally.threshold`` requests have been answered.
    """
    indexes = iter(range(total))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            for i in indexes:
                try:
                    tally.answers[i] = await send(http, i)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    tally.errors += 1
                if len(tally.answers) >= tally.threshold:
                    tally.answered.set()

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally


async def json_or_none(response: aiohttp.ClientResponse) -> Any:
    if response.content_type in ("application/json", "application/problem+json"):
        return await response.json(content_type=None)
    return None


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of the database file, opened as a fresh process would."""
    db = sqlite3.connect(path)
    try:
        result: str = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    return result


def stored(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()
