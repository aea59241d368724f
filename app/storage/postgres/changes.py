"""Revisions and the change log in PostgreSQL: the schema, taking a revision, the reads.

A write transaction reads the one ``change_feed`` row ``FOR UPDATE`` after it has locked
and read its resources: another transaction on any host that wants a revision waits for
this one's COMMIT, and PostgreSQL makes a commit visible before releasing its locks, so
revisions become visible in the order they were assigned (``docs/design.md``). The row is
updated only by a transaction that changed something, so revisions have no gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from app.changes import Change, purgeable_through
from app.domain import INT64_MAX, NAME_CEILING, Commit, now_iso

Connection = asyncpg.pool.PoolConnectionProxy

MIGRATION = [
    "ALTER TABLE counters ADD COLUMN version BIGINT NOT NULL DEFAULT 1",
    # One row: the last revision committed, and the last one purged from the log.
    "CREATE TABLE change_feed (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " revision BIGINT NOT NULL, purged_through BIGINT NOT NULL)",
    "INSERT INTO change_feed (id, revision, purged_through) VALUES (1, 0, 0)",
    'CREATE TABLE changes (revision BIGINT NOT NULL, kind TEXT COLLATE "C" NOT NULL,'
    ' key TEXT COLLATE "C" NOT NULL, value TEXT, version BIGINT, time TEXT NOT NULL,'
    " PRIMARY KEY (revision, kind, key))",
    "CREATE INDEX changes_resource ON changes (kind, key, revision)",
]

# As in SQLite, only records' entries are indexed by resource (their history is paged by id);
# a counter's or a lock's entry then lands on the log's last pages only.
ITEM_INDEX_MIGRATION = [
    "DROP INDEX changes_resource",
    "CREATE INDEX changes_item ON changes (key, revision) WHERE kind = 'item'",
]

_COLUMNS = "revision, kind, key, value, version, time"


async def take_revision(conn: Connection) -> Commit:
    """Inside a write transaction, after its resources are locked: the revision it commits as."""
    last: int = await conn.fetchval("SELECT revision FROM change_feed FOR UPDATE")
    return Commit(last + 1, now_iso())


async def write(conn: Connection, commit: Commit, changes: Sequence[Change]) -> None:
    """The entries of a commit, and its revision, if anything changed."""
    if not changes:
        return
    await conn.execute(
        "WITH feed AS (UPDATE change_feed SET revision = $1)"
        f" INSERT INTO changes ({_COLUMNS})"
        " SELECT $1, k, key, v, ver, $2 FROM"
        " unnest($3::text[], $4::text[], $5::text[], $6::bigint[]) AS c(k, key, v, ver)",
        commit.revision,
        commit.time,
        [c.kind for c in changes],
        [c.key for c in changes],
        [c.value for c in changes],
        [c.version for c in changes],
    )


async def purge(conn: Connection, cutoff: str, limit: int) -> int:
    """Delete the oldest whole revisions from before ``cutoff``, about ``limit`` entries."""
    # The feed row is updated last, so a writer waits for it only as long as that update.
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT revision, time FROM changes ORDER BY revision LIMIT $1", limit + 1
        )
        through = purgeable_through([(r[0], r[1]) for r in rows], cutoff, limit)
        if through is None:
            return 0
        status = await conn.execute("DELETE FROM changes WHERE revision <= $1", through)
        await conn.execute(
            "UPDATE change_feed SET purged_through = greatest(purged_through, $1)", through
        )
    return int(status.split()[-1])


def _value_columns(inline_max: int | None) -> str:
    """The value, or NULL and a flag when it is longer than ``inline_max`` bytes."""
    if inline_max is None:
        return "value, false"
    limit = int(inline_max)
    # octet_length reads a TOASTed value's size without fetching the value.
    return (
        f"CASE WHEN octet_length(value) > {limit} THEN NULL ELSE value END,"
        f" octet_length(value) > {limit}"
    )


def changes_query(
    since: int,
    limit: int,
    kind: str | None,
    prefix: str,
    resources: list[tuple[str, str]] | None,
    inline_max: int | None = None,
) -> tuple[str, list[Any]]:
    """As ``app.storage.sqlite.changes.changes_query``, in PostgreSQL's dialect."""
    params: list[Any] = [since, limit - 1]
    where = ["revision > $1"]
    if kind is not None:
        params.append(kind)
        where.append(f"kind = ${len(params)}")
    if prefix:
        params += [prefix, prefix + NAME_CEILING]
        where.append(f"key >= ${len(params) - 1} AND key < ${len(params)}")
    if resources is not None:
        params += [[k for k, _ in resources], [key for _, key in resources]]
        where.append(
            f"(kind, key) IN (SELECT * FROM unnest(${len(params) - 1}::text[],"
            f" ${len(params)}::text[]))"
        )
    condition = " AND ".join(where)
    sql = (
        f"SELECT f.revision, f.purged_through, c.* FROM change_feed AS f LEFT JOIN"
        f" (SELECT revision, kind, key, {_value_columns(inline_max)}, version, time FROM changes"
        f" WHERE {condition} AND revision <= coalesce("
        f"(SELECT revision FROM changes WHERE {condition} ORDER BY revision"
        f" LIMIT 1 OFFSET $2), {INT64_MAX})) AS c ON true"
        f" ORDER BY c.revision, c.kind, c.key"
    )
    return sql, params


# A held lock in a snapshot: its lease as recorded (``expires_at`` says whether it has ended).
_LOCK_VALUE = (
    "json_build_object('event', 'held', 'token', token, 'owner', owner, 'expires_at',"
    " to_char(to_timestamp(expires_at) AT TIME ZONE 'UTC',"
    ' \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\'))::text'
)


def snapshot_query(
    kind: str | None,
    prefix: str,
    resources: list[tuple[str, str]] | None,
    inline_max: int | None = None,
    after: tuple[str, str] | None = None,
    limit: int | None = None,
) -> tuple[str, list[Any]]:
    """As ``app.storage.sqlite.changes.snapshot_query``, in PostgreSQL's dialect."""
    branches = []
    params: list[Any] = []
    for table, key_column, this_kind, value, version in (
        ("counters", "name", "counter", "value::text, false", "version"),
        ("items", "id", "item", _value_columns(inline_max), "version"),
        ("locks", "name", "lock", f"{_LOCK_VALUE}, false", "token"),
    ):
        if kind is not None and kind != this_kind:
            continue
        if after is not None and after[0] > this_kind:
            continue
        where = ["token IS NOT NULL"] if this_kind == "lock" else []
        if prefix:
            params += [prefix, prefix + NAME_CEILING]
            where.append(f"{key_column} >= ${len(params) - 1} AND {key_column} < ${len(params)}")
        if after is not None and after[0] == this_kind:
            params.append(after[1])
            where.append(f"{key_column} > ${len(params)}")
        if resources is not None:
            params.append([key for k, key in resources if k == this_kind])
            where.append(f"{key_column} = ANY(${len(params)}::text[])")
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        select = (
            f"SELECT '{this_kind}'::text AS kind, {key_column} AS key, {value}, {version}"
            f" FROM {table}{condition}"
        )
        if limit is not None:
            select = f"({select} ORDER BY {key_column} LIMIT {int(limit)})"
        branches.append(select)
    inner = (
        " UNION ALL ".join(branches)
        or "SELECT NULL::text, NULL::text, NULL::text, NULL::boolean, NULL::bigint WHERE false"
    )
    sql = (
        f"SELECT f.revision, f.purged_through, s.* FROM change_feed AS f"
        f" LEFT JOIN ({inner}) AS s ON true ORDER BY 3, 4"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


# As app.storage.sqlite.changes: a deferred value, of a log entry or of a snapshot's record.
CHANGE_VALUE = "SELECT value FROM changes WHERE revision = $1 AND kind = $2 AND key = $3"
SNAPSHOT_VALUE = (
    "(SELECT value FROM changes WHERE kind = 'item' AND key = $1 AND version = $2"
    " AND revision <= $3 ORDER BY revision DESC LIMIT 1)"
    " UNION ALL (SELECT value FROM items WHERE id = $1 AND version = $2 AND NOT EXISTS"
    " (SELECT 1 FROM changes WHERE kind = 'item' AND key = $1 AND revision > $3)) LIMIT 1"
)


def versions_query(
    record_id: str, before: int, limit: int, version: int | None
) -> tuple[str, list[Any]]:
    """As ``app.storage.sqlite.changes.versions_query``, in PostgreSQL's dialect."""
    only = " AND version = $4" if version is not None else ""
    sql = (
        f"SELECT {_COLUMNS} FROM changes WHERE kind = 'item' AND key = $1"
        f" AND revision < $2 AND version IS NOT NULL{only} ORDER BY revision DESC LIMIT $3"
    )
    return sql, [record_id, before, limit, *(() if version is None else (version,))]
