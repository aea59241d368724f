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

from app.changes import Change, FeedPage, purgeable_through
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


def changes_query(
    since: int,
    limit: int,
    kind: str | None,
    prefix: str,
    resources: list[tuple[str, str]] | None,
) -> tuple[str, list[Any]]:
    """As ``app.storage.sqlite_changes.changes_query``, in PostgreSQL's dialect."""
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
        f" (SELECT {_COLUMNS} FROM changes WHERE {condition} AND revision <= coalesce("
        f"(SELECT revision FROM changes WHERE {condition} ORDER BY revision"
        f" LIMIT 1 OFFSET $2), {INT64_MAX})) AS c ON true"
        f" ORDER BY c.revision, c.kind, c.key"
    )
    return sql, params


def to_page(rows: list[Any]) -> FeedPage:
    changes = [Change(*tuple(row)[2:]) for row in rows if row[2] is not None]
    return FeedPage(rows[0][0], rows[0][1], changes)
