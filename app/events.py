"""The change feed as a worker follows it: event streams and long polls, woken by commits.

One hub per worker. While anyone listens it waits on the storage's change signal and reads
the change-log entries after the last revision it has read (its position): one read per
commit, at most one per poll interval, however many streams watch however many resources.
It hands each live subscription the commits that touched what it watches, each commit
whole, in revision order, and wakes long polls.

A subscription starts by catching up on its own: from a snapshot (no resume point) or from
the log after its resume point, a page at a time as its client takes them. Once a page
shows it has reached the hub's position it goes live and takes the hub's commits, dropping
any it has already read, so nothing falls between the two and nothing is repeated. A live
subscription whose client falls behind by more than ``max_pending`` entries drops what it
holds and catches up from the log again, so a slow reader costs the server a bounded amount
of memory and still misses nothing. A resume point older than the log's retention gets a
``reset`` and then a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from app.changes import Change, FeedPage, commits
from app.errors import StorageUnavailable, Unavailable
from app.snapshots import Event, Snapshot
from app.storage import Storage

logger = logging.getLogger(__name__)

PAGE = 1000  # entries read at once, by the hub and by a catching-up subscription
# Values longer than this are read one at a time as they are sent, not with their page:
# a page then holds at most PAGE * INLINE_MAX characters of values, and a client that
# stops reading holds back at most one large value.
INLINE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Watch:
    """What a subscription follows: named resources, or the whole feed by kind and key prefix."""

    resources: frozenset[tuple[str, str]] | None = None
    kind: str | None = None
    prefix: str = ""

    def covers(self, change: Change) -> bool:
        if self.resources is not None:
            return (change.kind, change.key) in self.resources
        return (self.kind is None or change.kind == self.kind) and change.key.startswith(
            self.prefix
        )

    def query(self) -> dict[str, Any]:
        """The filter as ``Storage.read_changes`` and ``Storage.snapshot`` take it."""
        resources = None if self.resources is None else sorted(self.resources)
        return {"kind": self.kind, "prefix": self.prefix, "resources": resources}


class Listener(Protocol):
    """Told of every entry of one kind the hub reads, and of the hub's closing."""

    def seen(self, change: Change) -> None: ...
    def close(self) -> None: ...


class Subscription:
    """One stream's place in the feed: catching up from storage, or live from the hub."""

    def __init__(self, hub: EventHub, watch: Watch, since: int | None) -> None:
        self.watch = watch
        self._hub = hub
        # The last revision handed to the client (None: it starts from a snapshot).
        self.last = since
        self.ended: str | None = None  # why it ended: "shutdown"
        self.live = False
        self._snapshot: Snapshot | None = None  # being read, page by page
        self._queue: deque[Event] = deque()
        self._queued = 0  # entries in the queue
        self._ready = asyncio.Event()

    def offer(self, revision: int, changes: list[Change]) -> None:
        """A commit the hub read; taken only while live, and only if not already sent."""
        if not self.live or (self._queue and revision <= self._queue[-1].revision):
            return
        if self.last is not None and revision <= self.last:
            return
        self._queue.append(Event("change", revision, changes))
        self._queued += len(changes)
        if self._queued > self._hub.max_pending:
            # Too far behind: let go of what is held and catch up from the log instead.
            self.fall_behind()
        self._ready.set()

    @property
    def pending(self) -> int:
        """Entries held for the client, not yet taken by ``next``."""
        return self._queued

    def fall_behind(self) -> None:
        """Drop the commits held for the client; the next ones are read from the log."""
        self._queue.clear()
        self._queued = 0
        self.live = False

    def wake(self) -> None:
        """Return from a wait in ``next`` now (with whatever is queued, perhaps nothing)."""
        self._ready.set()

    def end(self, reason: str) -> None:
        self.ended = reason
        self._ready.set()

    async def next(self, quiet_after: float) -> list[Event] | None:
        """The next events; ``[]`` after ``quiet_after`` s without any; None once ended."""
        if self.ended is not None:
            return None
        while not self.live:
            events = await self._catch_up()
            if events:
                return events
        if not self._queue:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(quiet_after):
                    await self._ready.wait()
            if self.ended is not None:
                return None
            if not self.live:
                return await self.next(0)
        events = list(self._queue)
        self._queue.clear()
        self._queued = 0
        if events:
            self.last = events[-1].revision
        return events

    async def _catch_up(self) -> list[Event]:
        """The next page from storage; goes live once it reaches the hub's position."""
        storage, query, page_size = self._hub.storage, self.watch.query(), self._hub.page
        if self.last is None and self._snapshot is None:
            self._snapshot = Snapshot(storage, query, page_size, INLINE_MAX)
        if self._snapshot is not None:
            events = await self._snapshot.next()
            if self._snapshot.revision is not None:
                self.last = self._snapshot.revision
                self._snapshot = None
                self._go_live_if_caught_up(self.last)
            return events
        assert self.last is not None
        page = await storage.read_changes(self.last, page_size, **query, inline_max=INLINE_MAX)
        if self.last < page.purged_through:
            reset = Event("reset", self.last, oldest=page.purged_through + 1)
            self.last = None
            return [reset, *await self._catch_up()]
        events = [Event("change", r, entries) for r, entries in commits(page.changes)]
        if events:
            self.last = events[-1].revision
        if len(page.changes) < page_size:
            # Every entry it watches up to the page's revision has been read.
            self._go_live_if_caught_up(page.revision)
        return events

    def _go_live_if_caught_up(self, complete_through: int) -> None:
        position = self._hub.position
        if position is not None and complete_through >= position:
            self.last = max(self.last or 0, complete_through)
            self.live = True


class EventHub:
    """Follows the change log while anyone listens, and fans each commit out to subscriptions."""

    def __init__(
        self,
        storage: Storage,
        interval: float,
        max_pending: int = 10_000,
        hurried_interval: float | None = None,
    ) -> None:
        self.storage = storage
        self.max_pending = max_pending
        self.page = PAGE  # entries or resources read at once
        self._interval = interval
        # While anyone follows hurried (a queued lock acquire), the log is read this often.
        self._hurried_interval = interval if hurried_interval is None else hurried_interval
        self._hurried = 0
        self._subscriptions: set[Subscription] = set()
        self._by_resource: dict[tuple[str, str], set[Subscription]] = {}
        self._broad: set[Subscription] = set()  # whole feed, by kind and prefix
        self._listeners: dict[str, Listener] = {}  # by kind
        self._waiters = 0
        self._moved = asyncio.Event()  # set, and replaced, whenever the position moves
        self.position: int | None = None  # the last revision read (None: not following)
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._closed = False

    def __len__(self) -> int:
        """Number of open subscriptions."""
        return len(self._subscriptions)

    @property
    def closed(self) -> bool:
        """Whether the worker is shutting down (no new subscriptions; long polls answer)."""
        return self._closed

    async def subscribe(self, watch: Watch, since: int | None) -> Subscription:
        """A subscription to ``watch`` from revision ``since`` (None: from a snapshot)."""
        if self._closed:
            raise Unavailable("shutting down")
        sub = Subscription(self, watch, since)
        self._subscriptions.add(sub)
        if watch.resources is None:
            self._broad.add(sub)
        else:
            for resource in watch.resources:
                self._by_resource.setdefault(resource, set()).add(sub)
        try:
            await self._follow()
        except BaseException:
            self.unsubscribe(sub)
            raise
        return sub

    def listen(self, kind: str, listener: Listener) -> None:
        """Hand ``listener`` every entry of ``kind`` read while the hub follows the log."""
        self._listeners[kind] = listener

    @contextlib.asynccontextmanager
    async def following(self, hurried: bool = False) -> AsyncIterator[None]:
        """Keep reading the log (and telling listeners) for as long as the block runs;
        ``hurried``: every hurried interval rather than every poll interval."""
        if self._closed:
            yield
            return
        self._waiters += 1
        self._hurried += hurried
        try:
            await self._follow()
            yield
        finally:
            self._waiters -= 1
            self._hurried -= hurried
            self._stop_if_idle()

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
        self._broad.discard(sub)
        for resource in sub.watch.resources or ():
            watchers = self._by_resource.get(resource)
            if watchers is not None:
                watchers.discard(sub)
                if not watchers:
                    del self._by_resource[resource]
        self._stop_if_idle()

    async def wait_past(self, revision: int, seconds: float) -> None:
        """Wait until this worker has read a commit after ``revision``, or ``seconds`` pass."""
        if self._closed:
            return
        self._waiters += 1
        try:
            await self._follow()
            async with asyncio.timeout(seconds):
                while not self._closed and (self.position is None or self.position <= revision):
                    await self._moved.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters -= 1
            self._stop_if_idle()

    async def close(self) -> None:
        """End every subscription and stop following (graceful shutdown)."""
        self._closed = True
        for sub in list(self._subscriptions):
            sub.end("shutdown")
        for listener in self._listeners.values():
            listener.close()
        self._moved.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        """Start following the log from its current end, unless already following."""
        async with self._starting:
            if self._task is None or self._task.done():
                self.position, _ = await self.storage.feed()
                self._task = asyncio.create_task(self._run(), name="lockstep-event-hub")

    def _stop_if_idle(self) -> None:
        if not self._subscriptions and not self._waiters and self._task is not None:
            self._task.cancel()
            self._task = None
            self.position = None

    async def _run(self) -> None:
        mark = -1
        while True:
            try:
                if self._hurried:
                    # Read the log itself each time: a wait for a change would sleep a poll
                    # interval, and the next read tells as much as a change check would.
                    await self._advance()
                    await asyncio.sleep(self._hurried_interval)
                    mark = -1
                    continue
                mark = await self.storage.wait_for_change(mark)
                await self._advance()
                # Under a steady stream of commits, read at most once an interval.
                await asyncio.sleep(self._interval)
            except StorageUnavailable:
                # Locked or briefly unavailable: the next read catches up from the position.
                logger.warning("event hub: database unavailable, retrying", exc_info=True)
                await asyncio.sleep(1)
            except Exception:
                # Streams must outlive a bad read: log it once per failure and carry on.
                logger.exception("event hub: reading the change log failed, retrying")
                await asyncio.sleep(1)

    async def _advance(self) -> None:
        """Read every commit after the position and hand each to the subscriptions it touched."""
        assert self.position is not None
        while True:
            page: FeedPage = await self.storage.read_changes(
                self.position, self.page, inline_max=INLINE_MAX
            )
            if page.purged_through > self.position:
                # Fell behind the retention itself: live streams catch up (and reset).
                for sub in self._subscriptions:
                    sub.fall_behind()
            for revision, entries in commits(page.changes):
                self._dispatch(revision, entries)
            if len(page.changes) >= self.page:
                self.position = page.changes[-1].revision
                continue
            self.position = max(self.position, page.revision, page.purged_through)
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
            return

    def _dispatch(self, revision: int, entries: list[Change]) -> None:
        touched: dict[Subscription, list[Change]] = {}
        for change in entries:
            listener = self._listeners.get(change.kind)
            if listener is not None:
                listener.seen(change)
            for sub in self._by_resource.get((change.kind, change.key), ()):
                touched.setdefault(sub, []).append(change)
            for sub in self._broad:
                if sub.watch.covers(change):
                    touched.setdefault(sub, []).append(change)
        for sub, changes in touched.items():
            sub.offer(revision, changes)


EVENTS = web.AppKey("events", EventHub)
