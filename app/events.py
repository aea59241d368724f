"""The change feed behind the event streams: who watches which resource, and what changed.

One hub per worker. While at least one stream is open it waits on the storage's change
signal (``Storage.wait_for_change``: any process's commit wakes it), re-reads every watched
resource (at most once per poll interval) and hands each subscriber the states that differ
from the last ones seen. A subscriber keeps at most one pending state per resource, the
newest: a consumer that reads slowly skips intermediate states instead of growing the
server's memory, and always ends on the latest committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any, Literal, NamedTuple

from aiohttp import web

from app.errors import StorageUnavailable, Unavailable
from app.storage import Storage

logger = logging.getLogger(__name__)


class Resource(NamedTuple):
    kind: Literal["counter", "item"]
    key: str


# (resource, state as JSON-ready dict, unix time the change was seen)
Change = tuple[Resource, dict[str, Any], float]


class Subscription:
    """One stream's view: the newest unseen state of each of its resources."""

    __slots__ = ("_pending", "_ready", "closed", "resources")

    def __init__(self, resources: tuple[Resource, ...]) -> None:
        self.resources = resources
        self.closed = False
        self._pending: dict[Resource, tuple[dict[str, Any], float]] = {}
        self._ready = asyncio.Event()

    def push(self, resource: Resource, state: dict[str, Any], seen: float) -> None:
        # Overwrites an unsent older state: memory per subscriber stays one state a resource.
        self._pending[resource] = (state, seen)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self, quiet_after: float) -> list[Change] | None:
        """Changes not yet taken; ``[]`` after ``quiet_after`` s without any; None once closed."""
        if not self._pending and not self.closed:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(quiet_after):
                    await self._ready.wait()
        if self.closed:
            return None
        changes = [(r, state, seen) for r, (state, seen) in self._pending.items()]
        self._pending.clear()
        return changes


class EventHub:
    """Fans committed changes out to subscribers; polls storage only while someone listens."""

    def __init__(self, storage: Storage, interval: float) -> None:
        self._storage = storage
        self._interval = interval
        self._watchers: dict[Resource, set[Subscription]] = {}
        self._last: dict[Resource, dict[str, Any]] = {}
        # Reads of a resource's first state in flight: streams opened together share one.
        self._loading: dict[Resource, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        """Number of open subscriptions."""
        return len({s for subs in self._watchers.values() for s in subs})

    async def subscribe(self, resources: tuple[Resource, ...]) -> Subscription:
        """A subscription whose first changes are the resources' current states."""
        if self._closed:
            raise Unavailable("shutting down")
        sub = Subscription(resources)
        # Registered before the first read, so a commit landing during that read is seen
        # by the next poll and never lost.
        for r in resources:
            self._watchers.setdefault(r, set()).add(sub)
        try:
            for r in resources:
                sub.push(r, await self._first_state(r), time.time())
        except BaseException:
            self.unsubscribe(sub)
            raise
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="lockstep-event-hub")
        return sub

    async def _first_state(self, r: Resource) -> dict[str, Any]:
        """The state last read of ``r``, or one read now, shared with every stream asking.

        Streams see the same state objects: a stream that waits for its client holds
        references, never a copy of its own.
        """
        state = self._last.get(r)
        if state is not None:
            return state
        loading = self._loading.get(r)
        if loading is None:
            loading = self._loading[r] = asyncio.ensure_future(self._read(r))
            loading.add_done_callback(partial(self._loaded, r))
        state = await asyncio.shield(loading)
        return self._last.setdefault(r, state)

    def _loaded(self, r: Resource, loading: asyncio.Future[dict[str, Any]]) -> None:
        del self._loading[r]
        if not loading.cancelled():
            loading.exception()  # retrieved here too: every stream that asked may be gone

    def unsubscribe(self, sub: Subscription) -> None:
        for r in sub.resources:
            watchers = self._watchers.get(r)
            if watchers is None:
                continue
            watchers.discard(sub)
            if not watchers:
                del self._watchers[r]
                self._last.pop(r, None)
        if not self._watchers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        """End every subscription and stop polling (graceful shutdown)."""
        self._closed = True
        for watchers in list(self._watchers.values()):
            for sub in watchers:
                sub.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self, r: Resource) -> dict[str, Any]:
        if r.kind == "counter":
            counter = await self._storage.get_counter(r.key)
            return {"name": r.key, "value": None if counter is None else counter.value}
        record = await self._storage.get_item(r.key)
        if record is None:
            return {"id": r.key, "value": None, "version": None, "updated_at": None}
        return {
            "id": r.key,
            "value": record.value,
            "version": record.version,
            "updated_at": record.updated_at,
        }

    async def _run(self) -> None:
        mark = -1
        while self._watchers:
            try:
                mark = await self._storage.wait_for_change(mark)
                for r in list(self._watchers):
                    state = await self._read(r)
                    if self._last.get(r) != state and r in self._watchers:
                        self._last[r] = state
                        seen = time.time()
                        for sub in self._watchers[r]:
                            sub.push(r, state, seen)
                # Under a steady stream of commits, re-read at most once an interval, and
                # stretch the interval with the number of watched resources (10 per interval),
                # so the reads a busy database causes stay bounded however much is watched.
                await asyncio.sleep(self._interval * max(1.0, len(self._watchers) / 10))
            except StorageUnavailable:
                # Locked or briefly unavailable: the next poll catches up with the state.
                logger.warning("event hub: database unavailable, retrying", exc_info=True)
                await asyncio.sleep(1)
            except Exception:
                # Streams must outlive a bad poll: log it once per failure and carry on.
                logger.exception("event hub: poll failed, retrying")
                await asyncio.sleep(1)


EVENTS = web.AppKey("events", EventHub)
