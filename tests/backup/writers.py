"""Clients that each increment a counter of their own and note when every answer arrived.

One request at a time per client, so client ``k``'s counter ``w{k}`` holding ``n`` means
exactly its first ``n`` increments are stored: a copy of the database can be checked
against what was acknowledged before any moment.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right

import aiohttp


class Writers:
    """``count`` clients incrementing ``w0`` … ``w{count-1}`` on the service at ``url``."""

    def __init__(self, url: str, count: int = 8) -> None:
        self.url = url
        self.acks: list[list[float]] = [[] for _ in range(count)]  # per client: answer times
        self.sent = [0] * count  # per client: increments sent (the last may be unanswered)
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Writers:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stop sending; requests cut off by a dead service end their client quietly."""
        self._stop.set()
        assert self._task is not None
        await self._task

    @property
    def acknowledged(self) -> int:
        return sum(len(a) for a in self.acks)

    async def wait_for(self, total: int) -> None:
        """Wait until ``total`` increments have been acknowledged in all."""
        async with asyncio.timeout(30):
            while self.acknowledged < total:
                self._progress.clear()
                await self._progress.wait()

    def acknowledged_by(self, moment: float) -> list[int]:
        """Per client, how many of its increments were acknowledged at or before ``moment``."""
        return [bisect_right(times, moment) for times in self.acks]

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await asyncio.gather(*(self._client(http, k) for k in range(len(self.acks))))

    async def _client(self, http: aiohttp.ClientSession, k: int) -> None:
        while not self._stop.is_set():
            self.sent[k] += 1
            try:
                async with http.post(f"{self.url}/counters/w{k}/increment") as r:
                    assert r.status == 200, await r.text()
                    value = (await r.json())["value"]
            except (aiohttp.ClientError, OSError):
                return  # the service is gone (killed on purpose)
            self.acks[k].append(time.monotonic())
            assert value == len(self.acks[k]), (k, value)
            self._progress.set()
