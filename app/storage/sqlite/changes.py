"""Revisions and the change log in SQLite: the schema, the entries a commit writes, the reads.

``BEGIN IMMEDIATE`` holds SQLite's single write lock, so the revision read at the start
of a write transaction (``Pending.open``) is the last committed one, and the one this
transaction's entries carry, if it changed anything, follows commit order
(``docs/design.md``). The last revision is the log's newest entry's, or once the purge has
emptied the log the last one it purged (``LAST_REVISION``): a commit writes no counter row.
"""

from __future__ import annotations

import sqlite3
from functools import cache
from typing import Any

import msgspec

from app.changes import Change, purgeable_through
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

# Only records' entries are indexed by resource (their history is paged by id); a counter's
# entry then lands on the log's last pages, not on a random page of a resource index.
ITEM_INDEX_MIGRATION = [
    "DROP INDEX changes_resource",
    "CREATE INDEX changes_item ON changes (key, revision) WHERE kind = 'item'",
]

# A record's history is a chain, not an index by resource: each record entry names the
# revision of the record's entry before it (``previous``), and the record's newest entry is
# its row's ``revision`` (a deleted record's is kept in ``item_tombstones``). A PUT then
# writes no page of a (key, revision) index that grows with the retention, only pages it
# already writes. Existing entries are chained from that index before it goes.
HISTORY_CHAIN_MIGRATION = [
    "ALTER TABLE changes ADD COLUMN previous INTEGER",
    "ALTER TABLE items ADD COLUMN revision INTEGER",
    "CREATE TABLE item_tombstones (id TEXT PRIMARY KEY, revision INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX item_tombstones_revision ON item_tombstones (revision)",  # for the purge
    "UPDATE changes SET previous = (SELECT max(p.revision) FROM changes AS p"
    " WHERE p.kind = 'item' AND p.key = changes.key AND p.revision < changes.revision)"
    " WHERE kind = 'item'",
    "UPDATE items SET revision ="
    " (SELECT max(revision) FROM changes WHERE kind = 'item' AND key = items.id)",
    "INSERT INTO item_tombstones (id, revision) SELECT key, max(revision) FROM changes"
    " WHERE kind = 'item' AND key NOT IN (SELECT id FROM items) GROUP BY key",
    # A deleted record's newest entry moves to its tombstone, whichever statement deletes the
    # row. A recreated row starts without one, so its first entry's previous is the tombstone's.
    "CREATE TRIGGER items_tombstone AFTER DELETE ON items WHEN old.revision IS NOT NULL BEGIN"
    " INSERT OR REPLACE INTO item_tombstones (id, revision) VALUES (old.id, old.revision); END",
    "DROP INDEX changes_item",
]

# A commit's counter entries are one row (``kind = PACKED``), its ``value`` a JSON array of
# ``[name, value, version]``, the value as the entry's JSON text. A counter's entry is a few
# bytes: a row and an index entry for each cost the writer more than the counter's own write
# (``docs/design.md``). Reads unpack them (``_ENTRIES``); records and locks keep a row each,
# and so do counter entries logged before packing, until the retention purges them.
PACKED = "counters"

# The last revision is derived from the log (the ``LAST_REVISION`` expression), so a commit
# writes one page less: the column that counted it goes.
DERIVED_REVISION_MIGRATION = ["ALTER TABLE change_feed DROP COLUMN revision"]

# The last revision committed, in a statement reading ``change_feed AS f``: every commit that
# changes something logs entries, and the purge records the last revision it deleted.
LAST_REVISION = "max(f.purged_through, coalesce((SELECT max(revision) FROM changes), 0))"

_COLUMNS = "revision, kind, key, value, version, time"

# The log's entries, a commit's packed counters unpacked: ``FROM {_ENTRIES}`` reads rows of
# ``changes AS c`` in revision order (its index), each with its entries (``e``, a packed row's),
# and the columns below say what each entry is.
_ENTRIES = f"changes AS c LEFT JOIN json_each(iif(c.kind = '{PACKED}', c.value, NULL)) AS e"
_KIND = f"iif(c.kind = '{PACKED}', 'counter', c.kind)"
_KEY = f"iif(c.kind = '{PACKED}', json_extract(e.value, '$[0]'), c.key)"
_VALUE = f"iif(c.kind = '{PACKED}', json_extract(e.value, '$[1]'), c.value)"
_VERSION = f"iif(c.kind = '{PACKED}', json_extract(e.value, '$[2]'), c.version)"


# The most entries one INSERT writes; a commit's entries go in chunks of powers of two up to
# this, so a handful of statements, each prepared once, cover any batch.
INSERT_CHUNK = 256


class Pending:
    """A write transaction's commit (revision and time) and the entries its units produced."""

    __slots__ = ("commit", "entries")

    def __init__(self, commit: Commit) -> None:
        self.commit = commit
        self.entries: list[Change] = []

    @classmethod
    def open(cls, conn: sqlite3.Connection) -> Pending:
        """Right after ``BEGIN IMMEDIATE``: the revision this transaction will commit as."""
        (last,) = conn.execute(f"SELECT {LAST_REVISION} FROM change_feed AS f").fetchone()
        return cls(Commit(last + 1, now_iso()))

    def write(self, conn: sqlite3.Connection) -> None:
        """Before COMMIT: the entries, if anything changed, the counters' packed in one row.

        Multi-row INSERTs binding the commit's revision and time once: ``executemany``
        costs about twice as much per row (a bind and a step per row from Python).
        """
        if not self.entries:
            return
        revision, time = self.commit.revision, self.commit.time
        entries: list[Change] = []
        counters: list[tuple[str, str | None, int | None]] = []
        for entry in self.entries:
            if entry.kind == "counter":
                counters.append((entry.key, entry.value, entry.version))
            else:
                entries.append(entry)
        if counters:
            packed = msgspec.json.encode(counters).decode()
            entries.append(Change(revision, PACKED, "", packed, None, time))
        start, size, end = 0, INSERT_CHUNK, len(entries)
        while start < end:
            while size > end - start:
                size //= 2
            params: list[Any] = [revision, time]
            for entry in entries[start : start + size]:
                params += entry[1:5]  # kind, key, value, version
            conn.execute(_insert(size), params)
            start += size
        # Then each written record's newest entry is this one. A deleted record's tombstone
        # keeps the entry before its deletion: history lists no deletions.
        written = [e.key for e in entries if e.kind == "item" and e.value is not None]
        if written:
            conn.execute(_NEWEST_ENTRY, (revision, msgspec.json.encode(written).decode()))


_NEWEST_ENTRY = "UPDATE items SET revision = ?1 WHERE id IN (SELECT value FROM json_each(?2))"
# A record's newest entry before this commit's ({0} the record's id): its row's, or for a
# record deleted (and perhaps created again since) its tombstone's.
_HEAD = (
    "coalesce((SELECT revision FROM items WHERE id = {0}),"
    " (SELECT revision FROM item_tombstones WHERE id = {0}))"
)


@cache
def _insert(rows: int) -> str:
    """An INSERT of ``rows`` entries: ?1 the revision, ?2 the time, then four per entry.

    ``OR FAIL`` spares SQLite a statement journal (a copy of every page the statement
    touches, to undo a half-done statement): an error here fails the whole transaction.
    """
    values = ", ".join(
        f"(?1, ?{n}, ?{n + 1}, ?{n + 2}, ?{n + 3}, ?2,"
        f" CASE ?{n} WHEN 'item' THEN {_HEAD.format(f'?{n + 1}')} END)"
        for n in range(3, 3 + 4 * rows, 4)
    )
    return f"INSERT OR FAIL INTO changes ({_COLUMNS}, previous) VALUES {values}"


def purge(conn: sqlite3.Connection, cutoff: str, limit: int) -> int:
    """Delete the oldest whole revisions from before ``cutoff`` (RFC 3339), about ``limit`` rows.

    Never part of a revision, and never one after a revision that is kept, so the log
    stays "every change after ``purged_through``". Returns how many entries were deleted (a
    row of packed counters holds several).
    """
    rows = conn.execute(
        "SELECT revision, time FROM changes ORDER BY revision LIMIT ?", (limit + 1,)
    ).fetchall()
    through = purgeable_through(rows, cutoff, limit)
    if through is None:
        return 0
    deleted = conn.execute(
        f"DELETE FROM changes WHERE revision <= ?"
        f" RETURNING iif(kind = '{PACKED}', json_array_length(value), 1)",
        (through,),
    ).fetchall()
    conn.execute("DELETE FROM item_tombstones WHERE revision <= ?", (through,))
    conn.execute("UPDATE change_feed SET purged_through = max(purged_through, ?)", (through,))
    return sum(count for (count,) in deleted)


def _value_columns(inline_max: int | None, value: str = "value") -> str:
    """The ``value`` column, or NULL and a flag when it is longer than ``inline_max`` characters."""
    if inline_max is None:
        return f"{value}, 0"
    limit = int(inline_max)
    return (
        f"CASE WHEN length({value}) > {limit} THEN NULL ELSE {value} END, length({value}) > {limit}"
    )


def changes_query(
    since: int,
    limit: int,
    kind: str | None,
    prefix: str,
    resources: list[tuple[str, str]] | None,
    inline_max: int | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """Whole commits after ``since`` in revision order, at least ``limit`` entries if there are.

    The page ends with the commit of its ``limit``-th entry, all of it, so a commit is never
    split between two pages. ``kind``, the key ``prefix`` and ``resources`` (kind, key) filter.
    """
    # Entries after ``since`` are always found by revision, the log's order and its index,
    # whatever the filter: no scan of a resource's past, and no sort to find the page's end.
    where = ["c.revision > ?"]
    params: list[Any] = [since]
    if kind is not None:
        where.append(f"{_KIND} = ?")
        params.append(kind)
    if prefix:
        where.append(f"{_KEY} >= ? AND {_KEY} < ?")
        params += [prefix, prefix + NAME_CEILING]
    if resources is not None:
        where.append(f"{_KIND} || ':' || {_KEY} IN (SELECT value FROM json_each(?))")
        params.append(msgspec.json.encode([f"{k}:{key}" for k, key in resources]).decode())
    condition = " AND ".join(where)
    # One statement, so the feed's bounds and the entries come from one snapshot.
    sql = (
        f"SELECT {LAST_REVISION}, f.purged_through, p.* FROM change_feed AS f LEFT JOIN"
        f" (SELECT c.revision, {_KIND} AS kind, {_KEY} AS key,"
        f" {_value_columns(inline_max, _VALUE)}, {_VERSION}, c.time FROM {_ENTRIES}"
        f" WHERE {condition} AND c.revision <= coalesce("
        f"(SELECT c.revision FROM {_ENTRIES} WHERE {condition} ORDER BY c.revision"
        f" LIMIT 1 OFFSET ?), {INT64_MAX})) AS p ON 1"
        f" ORDER BY p.revision, p.kind, p.key"
    )
    return sql, (*params, *params, limit - 1)


# A held lock in a snapshot: its lease as recorded (``expires_at`` says whether it has ended).
_LOCK_VALUE = (
    "json_object('event', 'held', 'token', token, 'owner', owner, 'expires_at',"
    " strftime('%Y-%m-%dT%H:%M:%fZ', expires_at, 'unixepoch'))"
)


def snapshot_query(
    kind: str | None,
    prefix: str,
    resources: list[tuple[str, str]] | None,
    inline_max: int | None = None,
    after: tuple[str, str] | None = None,
    limit: int | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The current state of what a filter covers, with the feed's bounds, in one statement.

    One statement reads one snapshot, so the revision it answers is exactly the commit the
    states are as of. With ``limit``, one page of it: the first ``limit`` resources in
    (kind, key) order after ``after``, each table read along its primary key.
    """
    branches = []
    params: list[Any] = []
    for table, key_column, this_kind, value, version in (
        ("counters", "name", "counter", "CAST(value AS TEXT), 0", "version"),
        ("items", "id", "item", _value_columns(inline_max), "version"),
        ("locks", "name", "lock", f"{_LOCK_VALUE}, 0", "token"),
    ):
        if kind is not None and kind != this_kind:
            continue
        if after is not None and after[0] > this_kind:
            continue
        where = ["token IS NOT NULL"] if this_kind == "lock" else []
        if prefix:
            where.append(f"{key_column} >= ? AND {key_column} < ?")
            params += [prefix, prefix + NAME_CEILING]
        if after is not None and after[0] == this_kind:
            where.append(f"{key_column} > ?")
            params.append(after[1])
        if resources is not None:
            where.append(f"{key_column} IN (SELECT value FROM json_each(?))")
            keys = [key for k, key in resources if k == this_kind]
            params.append(msgspec.json.encode(keys).decode())
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        select = (
            f"SELECT '{this_kind}' AS kind, {key_column} AS key, {value}, {version}"
            f" FROM {table}{condition}"
        )
        if limit is not None:
            select = f"SELECT * FROM ({select} ORDER BY {key_column} LIMIT {int(limit)})"
        branches.append(select)
    inner = " UNION ALL ".join(branches) or "SELECT NULL, NULL, NULL, NULL, NULL WHERE 0"
    sql = (
        f"SELECT {LAST_REVISION}, f.purged_through, s.* FROM change_feed AS f"
        f" LEFT JOIN ({inner}) AS s ON 1 ORDER BY 3, 4"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, tuple(params)


# A record's retained entries, newest first, from its newest one back along ``previous``
# (?1 the record's id; each step finds its entry through the revision index).
_CHAIN = (
    "WITH RECURSIVE chain(revision, previous, version) AS ("
    " SELECT revision, previous, version FROM changes"
    " WHERE revision = {start} AND kind = 'item' AND key = ?1"
    " UNION ALL SELECT c.revision, c.previous, c.version FROM chain"
    " JOIN changes AS c ON c.revision = chain.previous AND c.kind = 'item' AND c.key = ?1)"
)

# A deferred value: a log entry's by its commit; a snapshot's by the record's version as of
# the snapshot (the log's entry for it, else the record itself if nothing changed it since).
CHANGE_VALUE = "SELECT value FROM changes WHERE revision = ? AND kind = ? AND key = ?"
SNAPSHOT_VALUE = (
    _CHAIN.format(start=_HEAD.format("?1")) + " SELECT value FROM (SELECT value FROM changes"
    " WHERE kind = 'item' AND key = ?1 AND revision ="
    " (SELECT revision FROM chain WHERE version = ?2 AND revision <= ?3 LIMIT 1))"
    " UNION ALL SELECT value FROM items WHERE id = ?1 AND version = ?2 AND NOT EXISTS"
    " (SELECT 1 FROM changes WHERE revision = items.revision AND kind = 'item' AND key = ?1"
    " AND revision > ?3) LIMIT 1"
)


def versions_query(
    record_id: str, before: int, limit: int, version: int | None
) -> tuple[str, tuple[Any, ...]]:
    """A record's retained versions (not its deletions), newest first, below revision ``before``.

    The walk starts from the entry at ``before`` when there is one (the next page of a
    listing), else from the record's newest entry.
    """
    start = (
        "coalesce((SELECT previous FROM changes WHERE revision = ?2 AND kind = 'item'"
        f" AND key = ?1), {_HEAD.format('?1')})"
    )
    only = " AND version = ?4" if version is not None else ""
    sql = (
        _CHAIN.format(start=start) + f" SELECT c.{_COLUMNS.replace(', ', ', c.')} FROM"
        " (SELECT revision FROM chain WHERE revision < ?2 AND version IS NOT NULL"
        f"{only} LIMIT ?3) AS pick JOIN changes AS c ON c.revision = pick.revision"
        " AND c.kind = 'item' AND c.key = ?1 ORDER BY c.revision DESC"
    )
    params = (record_id, before, limit, *(() if version is None else (version,)))
    return sql, params
