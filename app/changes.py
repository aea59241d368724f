"""Change-log entries: what one commit did to one resource, as the feed and streams show it.

A write transaction compares each resource's state before and after its operations; every
resource that changed gets one entry, written in the same transaction as the change
(``docs/design.md``). Entries are stored with their value as JSON text, so a record's value
is encoded once for both its row and its entry, and the feed hands the text on as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgspec

from app.domain import Commit, Counter, Record

Kind = Literal["counter", "item", "lock"]
KINDS: tuple[Kind, ...] = ("counter", "item", "lock")
# The member naming the resource in an entry, by kind.
KEY_MEMBER: dict[str, str] = {"counter": "name", "item": "id", "lock": "name"}


class Change(NamedTuple):
    """One resource's change in one commit; ``value`` is JSON text, None once deleted.

    A tuple, not a dataclass: every write makes one per resource it changes, and a tuple is
    the cheapest object to make; its first six fields are the row it is stored as.
    """

    revision: int
    kind: str
    key: str
    value: str | None
    version: int | None
    time: str
    # A value too large to read with the rest of its page: ``value`` is None until
    # ``Storage.deferred_value`` reads it, just before it is sent.
    deferred: bool = False

    def to_json(self) -> dict[str, Any]:
        """The entry as the API shows it (``value`` decoded back to JSON)."""
        return {
            "revision": self.revision,
            "kind": self.kind,
            KEY_MEMBER[self.kind]: self.key,
            "value": msgspec.Raw(self.value) if self.value is not None else None,
            "version": self.version,
            "time": self.time,
        }


def counter_changes(
    before: Mapping[str, Counter | None], after: Mapping[str, Counter | None], commit: Commit
) -> list[Change]:
    """The entries of the counters whose state differs between ``before`` and ``after``.

    Every applied operation moves the version, so a counter changed exactly when its
    version did (or it appeared or disappeared).
    """
    changes = []
    for name, counter in after.items():
        old = before.get(name)
        if counter is None:
            if old is not None:
                changes.append(Change(commit.revision, "counter", name, None, None, commit.time))
        elif old is None or counter.version != old.version:
            changes.append(
                Change(
                    commit.revision,
                    "counter",
                    name,
                    str(counter.value),
                    counter.version,
                    commit.time,
                )
            )
    return changes


def record_changes(
    before: Mapping[str, Record | None],
    after: Mapping[str, Record | None],
    encoded: Mapping[str, str],
    commit: Commit,
) -> list[Change]:
    """The entries of the records that changed; ``encoded`` holds their values as JSON text."""
    changes = []
    for record_id, record in after.items():
        old = before.get(record_id)
        if record is None:
            if old is not None:
                changes.append(Change(commit.revision, "item", record_id, None, None, commit.time))
        elif record is not old:
            changes.append(
                Change(
                    commit.revision,
                    "item",
                    record_id,
                    encoded[record_id],
                    record.version,
                    commit.time,
                )
            )
    return changes


def commits(changes: Iterable[Change]) -> list[tuple[int, list[Change]]]:
    """Entries grouped by revision, in the order given (revision order)."""
    grouped: list[tuple[int, list[Change]]] = []
    for change in changes:
        if grouped and grouped[-1][0] == change.revision:
            grouped[-1][1].append(change)
        else:
            grouped.append((change.revision, [change]))
    return grouped


@dataclass(slots=True, frozen=True)
class FeedPage:
    """Entries read from the log, with the feed's bounds read in the same snapshot.

    ``revision`` is the last commit the snapshot saw and ``purged_through`` the last revision
    purged from the log by then: entries after ``since`` are complete only if
    ``since >= purged_through``.
    """

    revision: int
    purged_through: int
    changes: list[Change]


def purgeable_through(rows: list[tuple[int, str]], cutoff: str, limit: int) -> int | None:
    """The last revision to purge, given the oldest ``limit + 1`` entries' revisions and times.

    The last row only shows whether the revision before it goes on: a revision is purged
    only when all its entries are among the first ``limit``, except a first revision larger
    than ``limit`` on its own, which is purged whole (a commit holds at most
    ``LOCKSTEP_MAX_BATCH`` resources, so that stays bounded).
    """
    through = None
    for i, (revision, time) in enumerate(rows[:limit]):
        if time >= cutoff:
            break
        following = rows[i + 1][0] if i + 1 < len(rows) else None
        if following != revision:
            through = revision
    if through is None and rows and rows[0][1] < cutoff and rows[-1][0] == rows[0][0]:
        through = rows[0][0]
    return through


def feed_page(rows: list[Any]) -> FeedPage:
    """A page of the feed as either backend's query reads it: the first row holds the bounds,
    each row one entry."""
    changes = [
        Change(r[2], r[3], r[4], r[5], r[7], r[8], bool(r[6])) for r in rows if r[2] is not None
    ]
    return FeedPage(rows[0][0], rows[0][1], changes)


def snapshot_page(rows: list[Any], resources: list[tuple[str, str]] | None, time: str) -> FeedPage:
    """A snapshot read by ``snapshot_query``: one entry per resource, at the snapshot's revision.

    Rows are (revision, purged_through, kind, key, value, deferred, version); each named
    resource that does not exist gets an entry with ``value`` and ``version`` null.
    """
    revision, purged_through = rows[0][0], rows[0][1]
    found = {(r[2], r[3]): r for r in rows if r[2] is not None}
    wanted = sorted(found) if resources is None else sorted(set(resources))
    changes = []
    for kind, key in wanted:
        row = found.get((kind, key))
        value, deferred, version = (row[4], bool(row[5]), row[6]) if row else (None, False, None)
        changes.append(Change(revision, kind, key, value, version, time, deferred))
    return FeedPage(revision, purged_through, changes)
