"""A stream's opening snapshot, read a page at a time so no size of database makes it one event.

A stream watching named resources (at most ``LOCKSTEP_EVENTS_MAX_RESOURCES``) reads its
snapshot in one statement: one event, every entry at one revision. A stream over the whole
feed or a prefix of it may cover millions of resources, so it reads them in pages along
the tables' keys, each page in one short statement at the revision it saw. Resources that
changed after their page was read are then caught up from the change log: every entry
after the first page's revision for a resource whose page was read before that entry.
Those pages end at the revision of the last log read, the snapshot's revision, so taken
in order the pages give exactly the state as of it: a later entry for a resource replaces
an earlier one. Every page but the last is marked ``more`` and has no id, so a client that
loses the connection midway has no resume point inside a snapshot and gets a new one.

No read transaction is held between pages and at most one page is held in memory. If the
log drops entries the snapshot still needs (it took longer than the retention), the
snapshot starts over after an ``event: reset``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from app.changes import Change
from app.storage import Storage

# (kind, key): where a resource sits in a snapshot's order.
Position = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a stream sends: a commit's entries, a snapshot page, or a reset."""

    kind: str  # "change" | "snapshot" | "reset"
    revision: int
    changes: list[Change] = field(default_factory=list)
    oldest: int = 0  # for a reset: the oldest revision still in the log
    more: bool = False  # for a snapshot: further pages follow (no id is sent)


class Snapshot:
    """The pages of one snapshot, in order; ``revision`` is set once the last one is read."""

    def __init__(self, storage: Storage, query: dict[str, Any], page: int, inline_max: int) -> None:
        self._storage = storage
        self._query = query
        self._page = page
        self._inline_max = inline_max
        self.revision: int | None = None
        self._start()

    def _start(self) -> None:
        self._after: Position | None = None
        # Key pages read so far: the last position of each but the final one, and the
        # revision each was read at; the final one covers every position after the last end.
        self._ends: list[Position] = []
        self._revisions: list[int] = []
        self._keys_done = False
        self._log_at = 0  # how far the log has been read for changes made meanwhile

    async def next(self) -> list[Event]:
        """The next page (``[]`` when a read found nothing to send), or a reset to start over."""
        if self._query["resources"] is not None:
            whole = await self._storage.snapshot(**self._query, inline_max=self._inline_max)
            self.revision = whole.revision
            return [Event("snapshot", whole.revision, whole.changes)]
        held: list[Change] = []
        if not self._keys_done:
            page = await self._storage.snapshot(
                **self._query, inline_max=self._inline_max, after=self._after, limit=self._page
            )
            if not self._revisions:
                self._log_at = page.revision
            self._revisions.append(page.revision)
            if len(page.changes) >= self._page:
                last = page.changes[-1]
                self._after = (last.kind, last.key)
                self._ends.append(self._after)
                return [Event("snapshot", page.revision, page.changes, more=True)]
            # The last key page goes out with the log's first page: a small snapshot is one
            # event, as if read in one statement.
            self._keys_done = True
            held = page.changes
        return await self._log_page(held)

    async def _log_page(self, held: list[Change]) -> list[Event]:
        """The entries made after their resource's page was read, one log page of them."""
        log = await self._storage.read_changes(
            self._log_at,
            self._page,
            kind=self._query["kind"],
            prefix=self._query["prefix"],
            inline_max=self._inline_max,
        )
        if log.purged_through > self._log_at:
            restart = Event("reset", self._log_at, oldest=log.purged_through + 1)
            self._start()
            return [restart]
        latest = {(c.kind, c.key): c for c in held}
        for change in log.changes:
            position = (change.kind, change.key)
            if change.revision > self._read_at(position):
                latest[position] = change
        changes = [latest[p] for p in sorted(latest)]
        if len(log.changes) >= self._page:
            self._log_at = log.changes[-1].revision
            return [Event("snapshot", self._log_at, changes, more=True)] if changes else []
        # Every entry is now the state as of this read's revision.
        self.revision = max(self._log_at, log.revision)
        final = [c._replace(revision=self.revision) for c in changes]
        return [Event("snapshot", self.revision, final)]

    def _read_at(self, position: Position) -> int:
        """The revision of the key page that covers ``position``."""
        return self._revisions[bisect_left(self._ends, position)]
