"""Revisions and the change log on every backend: an entry per resource per commit, purged whole."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.changes import Change, feed_page, purgeable_through
from app.domain import (
    Counted,
    DeleteCounter,
    DeleteRecord,
    Increment,
    PatchRecord,
    PutRecord,
    SetValue,
    Written,
)
from app.settings import Settings
from app.storage import Storage
from app.storage.backends import open_storage
from app.storage.postgres import changes as pg_changes
from app.storage.sqlite import changes as sqlite_changes
from app.storage.sqlite.schema import MIGRATIONS, migrate
from tests.conftest import settings_for
from tests.storage.older import database_at

FUTURE = "9999-01-01T00:00:00.000Z"  # a purge cutoff every entry is older than


def revision_of(outcome: Any) -> int:
    assert isinstance(outcome, Counted | Written), outcome
    return outcome.revision


def summary(changes: list[Change]) -> list[tuple[int, str, str, str | None, int | None]]:
    return [(c.revision, c.kind, c.key, c.value, c.version) for c in changes]


async def test_each_commit_logs_one_entry_per_changed_resource(storage: Storage) -> None:
    """Entries carry the commit's revision, the new value as JSON, and the version; deletes null."""
    [a1, a2] = await storage.apply_counter_ops("a", [Increment(2), Increment(3)])
    [doc] = await storage.apply_record_ops("doc", [PutRecord({"k": [1, "x"]})])
    await storage.apply_counter_ops("a", [DeleteCounter()])
    await storage.apply_record_ops("doc", [PatchRecord({"k": None}), DeleteRecord()])
    r1, r2 = revision_of(a1), revision_of(doc)
    assert revision_of(a2) == r1
    page = await storage.read_changes(0, 100)
    assert summary(page.changes) == [
        (r1, "counter", "a", "5", 2),
        (r2, "item", "doc", '{"k":[1,"x"]}', 1),
        (r2 + 1, "counter", "a", None, None),
        (r2 + 2, "item", "doc", None, None),
    ]
    assert page.revision == r2 + 2
    assert page.purged_through == 0
    assert await storage.feed() == (r2 + 2, 0)


async def test_a_commit_that_changes_nothing_uses_no_revision(storage: Storage) -> None:
    """Failed operations only: no revision is used, no entry written."""
    [first] = await storage.apply_counter_ops("a", [Increment(1)])
    await storage.apply_counter_ops("ghost", [DeleteCounter()])
    [second] = await storage.apply_counter_ops("a", [Increment(1)])
    assert revision_of(second) == revision_of(first) + 1
    assert len((await storage.read_changes(0, 100)).changes) == 2


async def test_resources_committed_together_share_one_revision(storage: Storage) -> None:
    """Writes batched into one transaction log under one revision, and pages never split it."""
    outcomes = await asyncio.gather(
        *(storage.apply_counter_ops(f"c{i:02d}", [Increment(1)]) for i in range(30))
    )
    revisions = [revision_of(o[0]) for o in outcomes]
    page = await storage.read_changes(0, 1)
    # The first entry's whole commit comes with it, however many entries that is.
    assert len(page.changes) == revisions.count(revisions[0]) >= 1
    assert {c.revision for c in page.changes} == {page.changes[0].revision}
    everything = (await storage.read_changes(0, 1000)).changes
    assert sorted(c.key for c in everything) == [f"c{i:02d}" for i in range(30)]
    assert [c.revision for c in everything] == sorted(revisions)


async def test_read_changes_filters_by_kind_prefix_and_resources(storage: Storage) -> None:
    """kind, prefix and a list of resources each narrow the entries read."""
    await storage.apply_counter_ops("a.1", [Increment(1)])
    await storage.apply_counter_ops("b.1", [Increment(1)])
    await storage.apply_record_ops("a.2", [PutRecord(1)])
    keys = [c.key for c in (await storage.read_changes(0, 10, kind="item")).changes]
    assert keys == ["a.2"]
    keys = [c.key for c in (await storage.read_changes(0, 10, prefix="a.")).changes]
    assert keys == ["a.1", "a.2"]
    wanted = [("counter", "b.1"), ("item", "a.2"), ("counter", "a.2")]
    keys = [c.key for c in (await storage.read_changes(0, 10, resources=wanted)).changes]
    assert keys == ["b.1", "a.2"]


async def test_purge_deletes_whole_revisions_and_records_how_far(storage: Storage) -> None:
    """A purge takes the oldest whole commits, up to about its limit, and moves purged_through."""
    for i in range(5):
        await storage.apply_counter_ops(f"c{i}", [Increment(1)])
    last, _ = await storage.feed()
    assert await storage.purge_changes(FUTURE, 2) == 2
    page = await storage.read_changes(0, 100)
    assert page.purged_through == last - 3
    assert [c.key for c in page.changes] == ["c2", "c3", "c4"]
    assert await storage.purge_changes("2000-01-01T00:00:00.000Z", 100) == 0
    assert await storage.purge_changes(FUTURE, 100) == 3
    assert await storage.feed() == (last, last)
    [after] = await storage.apply_counter_ops("c0", [Increment(1)])
    assert revision_of(after) == last + 1


@pytest.mark.parametrize(
    ("rows", "limit", "through"),
    [
        ([], 10, None),
        ([(1, "a"), (2, "a"), (3, "z")], 10, 2),  # stops at the first entry too young
        ([(1, "a"), (2, "a"), (2, "a")], 2, 1),  # revision 2 goes on past the batch
        ([(1, "a"), (1, "a"), (1, "a")], 2, 1),  # one revision larger than a batch: whole
        ([(1, "a"), (2, "a")], 2, 2),
    ],
)
def test_purgeable_through_never_splits_a_revision(
    rows: list[tuple[int, str]], limit: int, through: int | None
) -> None:
    """The purge's cut is the end of a revision, before the first one too young to go."""
    assert purgeable_through(rows, "m", limit) == through


async def test_two_processes_on_one_database_share_one_dense_sequence(settings: Settings) -> None:
    """Two storages (two workers or hosts) writing at once: revisions are unique and gap-free."""
    a = await open_storage(settings)
    b = await open_storage(settings)
    try:
        outcomes = await asyncio.gather(
            *(
                s.apply_counter_ops(f"{name}{i % 3}", [Increment(1)])
                for i in range(60)
                for name, s in (("a", a), ("b", b))
            )
        )
        page = await a.read_changes(0, 1000)
        revisions = sorted({c.revision for c in page.changes})
        assert revisions == list(range(1, len(revisions) + 1))
        assert {revision_of(o[0]) for o in outcomes} == set(revisions)
        # Each counter's entries go up in version, and the last ones count every increment.
        for key in {c.key for c in page.changes}:
            versions = [c.version or 0 for c in page.changes if c.key == key]
            assert versions == sorted(set(versions))
        final = {c.key: c.version for c in page.changes}
        assert sum(v or 0 for v in final.values()) == 120
    finally:
        await a.close()
        await b.close()


async def test_sqlite_database_from_before_revisions_is_migrated(tmp_path: Path) -> None:
    """A database at schema 2 opens with counters at version 1 and an empty log at revision 0."""
    settings = settings_for(tmp_path)
    with database_at(settings, 2) as conn:
        conn.execute("INSERT INTO counters (name, value) VALUES ('old', 41)")
    storage = await open_storage(settings)
    try:
        counter = await storage.get_counter("old")
        assert counter is not None and (counter.value, counter.version) == (41, 1)
        assert await storage.feed() == (0, 0)
        [outcome] = await storage.apply_counter_ops("old", [Increment(1)])
        assert isinstance(outcome, Counted) and outcome.revision == 1
        assert outcome.counter.version == 2
    finally:
        await storage.close()


@pytest.mark.parametrize("logged", [True, False])
async def test_sqlite_database_with_a_revision_row_goes_on_from_it(
    tmp_path: Path, logged: bool
) -> None:
    """A database at schema 5 (the revision counted in a row) continues its sequence.

    The last revision is then read from the log, or, once the purge emptied it, from
    ``purged_through``.
    """
    settings = settings_for(tmp_path)
    with database_at(settings, 5) as conn:
        conn.execute("UPDATE change_feed SET revision = 7, purged_through = ?", (7 - 2 * logged,))
        if logged:
            conn.executemany(
                "INSERT INTO changes VALUES (?, 'counter', 'c', ?, ?, '2026-01-01T00:00:00.000Z')",
                [(6, "1", 1), (7, "2", 2)],
            )
    storage = await open_storage(settings)
    try:
        assert await storage.feed() == (7, 7 - 2 * logged)
        [outcome] = await storage.apply_counter_ops("d", [Increment(1)])
        assert revision_of(outcome) == 8
        assert (await storage.read_changes(0, 10)).revision == 8
    finally:
        await storage.close()


async def test_sqlite_log_has_no_index_by_resource(tmp_path: Path) -> None:
    """A database at schema 3 ends with the log indexed by revision only; history and feed read.

    No entry lands on a random page of a per-resource index (a record's history is a chain
    through the revision index), and the feed finds entries after ``since`` by revision
    whatever its filter.
    """
    settings = settings_for(tmp_path)
    with database_at(settings, 3):
        pass  # empty, as schema 3 made it
    storage = await open_storage(settings)
    try:
        await storage.apply_record_ops("doc", [PutRecord({"a": 1})])
        await storage.apply_counter_ops("c", [Increment(1)])
        await storage.apply_record_ops("doc", [PutRecord({"a": 2})])
        history = await storage.record_versions("doc", 100, 10)
        assert [c.version for c in history] == [2, 1]
        page = await storage.read_changes(1, 10, kind="item", prefix="d")
        assert [(c.kind, c.key, c.version) for c in page.changes] == [("item", "doc", 2)]
    finally:
        await storage.close()
    with sqlite3.connect(settings.sqlite_path) as conn:
        indexes = conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'changes'"
        ).fetchall()
        assert indexes == [("changes_revision",)]
        for kind, prefix in (("item", "d"), ("counter", "")):
            sql, params = sqlite_changes.changes_query(0, 10, kind, prefix, None)
            plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "changes_revision" in plan and "AUTOMATIC" not in plan
        sql, params = sqlite_changes.versions_query("doc", 100, 10, None)
        plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        # Each step a lookup by revision, and the walk a co-routine the LIMIT stops.
        assert not re.search(r"SCAN (c|changes)\b", plan) and "CO-ROUTINE chain" in plan, plan


@pytest.mark.backends("postgres")
async def test_postgres_log_indexes_only_records_by_resource(
    settings: Settings, storage: Storage
) -> None:
    """As in SQLite: a record's history reads the records-only index; no entry else is in one."""
    await storage.apply_record_ops("doc", [PutRecord({"a": 1})])
    await storage.apply_counter_ops("c", [Increment(1)])
    await storage.apply_record_ops("doc", [PutRecord({"a": 2})])
    history = await storage.record_versions("doc", 100, 10)
    assert [c.version for c in history] == [2, 1]
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE tablename = 'changes' AND schemaname = current_schema()"
        )
        indexes: dict[str, str] = {r[0]: r[1] for r in rows}
        assert "changes_resource" not in indexes
        assert "WHERE (kind = 'item'::text)" in indexes["changes_item"]
        await conn.execute("SET enable_seqscan = off")  # a tiny table: ask which index fits
        sql, params = pg_changes.versions_query("doc", 100, 10, None)
        plan = " ".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *params))
        assert "changes_item" in plan
    finally:
        await conn.close()


def test_sqlite_commit_writes_every_entry_whatever_their_number(tmp_path: Path) -> None:
    """Entries go in chunks of powers of two, a commit's counters packed in one row; any count,
    past the largest chunk, writes all, and the feed reads each back as it was written."""
    with sqlite3.connect(tmp_path / "log.db", isolation_level=None) as conn:
        migrate(conn)
        for count in (1, 6, 2 * sqlite_changes.INSERT_CHUNK + 5):
            conn.execute("BEGIN IMMEDIATE")
            pending = sqlite_changes.Pending.open(conn)
            revision, time = pending.commit.revision, pending.commit.time
            entries = [
                Change(revision, "counter", f"c{i:04d}", str(i - 2), i, time) for i in range(count)
            ]
            entries += [Change(revision, "counter", "gone", None, None, time)]
            entries += [
                Change(revision, "item", f"r{i:04d}", f'{{"n": {i}}}', 1, time)
                for i in range(count)
            ]
            pending.entries += entries
            pending.write(conn)
            conn.execute("COMMIT")
            query = sqlite_changes.changes_query(revision - 1, 10 * count, None, "", None)
            page = feed_page(conn.execute(*query).fetchall())
            assert page.revision == revision
            assert page.changes == sorted(entries, key=lambda e: (e.kind, e.key))
        conn.execute("BEGIN IMMEDIATE")
        assert sqlite_changes.Pending.open(conn).commit.revision == 4
        conn.execute("ROLLBACK")


async def _poison_the_log(settings: Settings) -> None:
    """Make every change-log insert of key 'poison' fail, by a trigger in the database."""
    if not settings.uses_postgres:
        with sqlite3.connect(settings.sqlite_path) as db:
            db.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON changes WHEN NEW.key = 'poison'"
                " OR (NEW.kind = 'counters' AND instr(NEW.value, '\"poison\"'))"
                " BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
        return
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN"
            " IF NEW.key = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;"
            " RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        await conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON changes FOR EACH ROW EXECUTE FUNCTION poison()"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("existing", [False, True])
async def test_a_change_whose_entry_fails_is_not_committed(
    settings: Settings, storage: Storage, existing: bool
) -> None:
    """When its log entry cannot be written, the change itself is rolled back (one transaction).

    ``existing`` takes PostgreSQL's increment fast path, a statement of its own.
    """
    if existing:
        await storage.apply_counter_ops("poison", [Increment(1)])
    await _poison_the_log(settings)
    with pytest.raises(Exception, match="poisoned"):
        await storage.apply_counter_ops("poison", [Increment(1)])
    counter = await storage.get_counter("poison")
    assert (counter.value if counter else None) == (1 if existing else None)
    [later] = await storage.apply_counter_ops("fine", [Increment(1)])
    page = await storage.read_changes(0, 100)
    assert [c.key for c in page.changes] == ["poison"] * existing + ["fine"]
    assert revision_of(later) == page.revision


async def test_sqlite_counter_entries_from_before_packing_read_beside_packed_ones(
    tmp_path: Path,
) -> None:
    """Counter entries logged a row each, before packing, read back unchanged, a deletion's
    too, in order with the packed ones written after them, and the purge counts them all."""
    settings = settings_for(tmp_path)
    t = "2026-01-01T00:00:00.000Z"
    logged = [
        (1, "counter", "a", "1", 1),
        (1, "counter", "b", "-9223372036854775808", 3),
        (2, "counter", "a", None, None),
        (2, "item", "doc", '{"n": 1}', 1),
        (3, "counter", "b", "9223372036854775807", 4),
    ]
    with database_at(settings, len(MIGRATIONS)) as conn:
        conn.executemany(
            f"INSERT INTO changes (revision, kind, key, value, version, time)"
            f" VALUES (?, ?, ?, ?, ?, '{t}')",
            logged,
        )
        conn.execute("INSERT INTO counters VALUES ('b', 9223372036854775807, 4)")
    storage = await open_storage(settings)
    try:
        # Submitted together, so they commit together: one packed row, two entries.
        outcomes = await asyncio.gather(
            storage.apply_counter_ops("b", [SetValue(0)]),
            storage.apply_counter_ops("c", [Increment(1)]),
        )
        assert [revision_of(o[0]) for o in outcomes] == [4, 4]
        page = await storage.read_changes(0, 100)
        assert [c[:5] for c in page.changes] == [
            *logged,
            (4, "counter", "b", "0", 5),
            (4, "counter", "c", "1", 1),
        ]
        assert [c.time for c in page.changes[: len(logged)]] == [t] * len(logged)
        page = await storage.read_changes(0, 2, kind="counter", prefix="b")
        assert [(c.revision, c.value) for c in page.changes] == [
            (1, "-9223372036854775808"),
            (3, "9223372036854775807"),
        ]
        assert await storage.purge_changes(FUTURE, 100) == 7
    finally:
        await storage.close()
