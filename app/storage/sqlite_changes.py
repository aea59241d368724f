"""Revisions and the change log in SQLite: the schema, the entries a commit writes, the reads.

``BEGIN IMMEDIATE`` holds SQLite's single write lock, so the revision read at the start
of a write transaction (``Pending.open``) is the last committed one, and the one this
transaction writes back, if it changed anything, follows commit order (``docs/design.md``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from app.changes import Change, FeedPage, purgeable_through
from app.domain import INT64_MAX, NAME_CEILING, Commit, now_iso

MIGRATION = [
    "ALTER TABLE counters ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
    # One row: the last revision committed, and the last one purged from the log.
    "CREATE TABLE change_feed (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " revision INTEGER NOT NULL, purged_through INTEGER NOT NULL)",
    "INSERT INTO change_feed (id, revision, purged_through) VALUES (1, 0, 0)",
    "CREATE TABLE changes (revision INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,"
    " value TEXT, version INTEGER, time TEXT NOT NULL)",
    "CREATE INDEX changes_revision ON changes (revision)",
    "CREATE INDEX changes_resource ON changes (kind, key, revision)",
]

_COLUMNS = "revision, kind, key, value, version, time"


class Pending:
    """A write transaction's commit (revision and time) and the entries its units produced."""

    __slots__ = ("commit", "entries")

    def __init__(self, commit: Commit) -> None:
        self.commit = commit
        self.entries: list[Change] = []

    @classmethod
    def open(cls, conn: sqlite3.Connection) -> Pending:
        """Right after ``BEGIN IMMEDIATE``: the revision this transaction will commit as."""
        (last,) = conn.execute("SELECT revision FROM change_feed").fetchone()
        return cls(Commit(last + 1, now_iso()))

    def write(self, conn: sqlite3.Connection) -> None:
        """Before COMMIT: the entries, and the revision, if anything changed."""
        if not self.entries:
            return
        conn.execute("UPDATE change_feed SET revision = ?", (self.commit.revision,))
        conn.executemany(
            f"INSERT INTO changes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [(c.revision, c.kind, c.key, c.value, c.version, c.time) for c in self.entries],
        )


def purge(conn: sqlite3.Connection, cutoff: str, limit: int) -> int:
    """Delete the oldest whole revisions from before ``cutoff`` (RFC 3339), about ``limit`` rows.

    Never part of a revision, and never one after a revision that is kept, so the log
    stays "every change after ``purged_through``". Returns how many entries were deleted.
    """
    rows = conn.execute(
        "SELECT revision, time FROM changes ORDER BY revision LIMIT ?", (limit + 1,)
    ).fetchall()
    through = purgeable_through(rows, cutoff, limit)
    if through is None:
        return 0
    deleted = conn.execute("DELETE FROM changes WHERE revision <= ?", (through,)).rowcount
    conn.execute("UPDATE change_feed SET purged_through = max(purged_through, ?)", (through,))
    return int(deleted)


def changes_query(
    since: int,
    limit: int,
    kind: str | None,
    prefix: str,
    resources: list[tuple[str, str]] | None,
) -> tuple[str, tuple[Any, ...]]:
    """Whole commits after ``since`` in revision order, at least ``limit`` entries if there are.

    The page ends with the commit of its ``limit``-th entry, all of it, so a commit is never
    split between two pages. ``kind``, the key ``prefix`` and ``resources`` (kind, key) filter.
    """
    where = ["revision > ?"]
    params: list[Any] = [since]
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    if prefix:
        where.append("key >= ? AND key < ?")
        params += [prefix, prefix + NAME_CEILING]
    if resources is not None:
        where.append("kind || ':' || key IN (SELECT value FROM json_each(?))")
        params.append(msgspec.json.encode([f"{k}:{key}" for k, key in resources]).decode())
    condition = " AND ".join(where)
    # One statement, so the feed's bounds and the entries come from one snapshot.
    sql = (
        f"SELECT f.revision, f.purged_through, c.* FROM change_feed AS f LEFT JOIN"
        f" (SELECT {_COLUMNS} FROM changes WHERE {condition} AND revision <= coalesce("
        f"(SELECT revision FROM changes WHERE {condition} ORDER BY revision"
        f" LIMIT 1 OFFSET ?), {INT64_MAX})) AS c ON 1"
        f" ORDER BY c.revision, c.kind, c.key"
    )
    return sql, (*params, *params, limit - 1)


def to_page(rows: list[Any]) -> FeedPage:
    """The page ``changes_query`` read: its first row holds the bounds, each row one entry."""
    changes = [Change(*row[2:]) for row in rows if row[2] is not None]
    return FeedPage(rows[0][0], rows[0][1], changes)
