"""The SQLite backend: durability settings, migrations, group commit, savepoint isolation."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from app.domain import (
    INT64_MAX,
    Counter,
    DeleteCounter,
    Increment,
    PatchRecord,
    Precondition,
    PutRecord,
    SetValue,
    Written,
)
from app.errors import OutOfRange, PreconditionFailed, StorageUnavailable
from app.idempotency import Claim, Rendered, Replay
from app.settings import Settings
from app.startup import StartupError
from app.storage.sqlite import SQLiteStorage
from app.storage.sqlite.changes import Pending
from app.storage.sqlite.connection import in_db_thread
from app.storage.sqlite.schema import MIGRATIONS
from tests.outcomes import value, values

pytestmark = pytest.mark.backends("sqlite")


def pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def test_open_creates_schema_in_wal_mode(settings: Settings, storage: SQLiteStorage) -> None:
    """A fresh database is created in WAL mode at the latest schema version."""
    assert settings.sqlite_path.exists()
    assert pragma(settings.sqlite_path, "journal_mode") == "wal"
    assert pragma(settings.sqlite_path, "user_version") == len(MIGRATIONS)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
async def test_writer_thread_does_not_preempt_the_event_loop(storage: SQLiteStorage) -> None:
    """The writer's thread runs SCHED_BATCH; the event loop's thread keeps the default policy."""
    policy = await in_db_thread(storage._writer._db, lambda conn: os.sched_getscheduler(0))
    assert policy == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


async def test_open_refuses_old_sqlite(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Startup stops with a clear message on SQLite older than 3.35."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(StartupError, match=r"SQLite >= 3\.35"):
        await SQLiteStorage.open(settings)


async def test_open_refuses_schema_newer_than_the_code(settings: Settings) -> None:
    """A database migrated by a newer lockstep is refused, named, and left as it was."""
    storage = await SQLiteStorage.open(settings)
    await storage.close()
    path = settings.sqlite_path
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StartupError) as error:
        await SQLiteStorage.open(settings)
    assert str(error.value) == (
        f"{path.absolute()} has schema version {len(MIGRATIONS) + 1}, newer than this"
        f" lockstep's ({len(MIGRATIONS)}); run the lockstep that wrote it, or restore a backup"
    )
    assert pragma(path, "user_version") == len(MIGRATIONS) + 1


async def test_open_names_a_damaged_database_and_the_fix(settings: Settings) -> None:
    """A database whose pages are garbage past the header is refused as damaged, not opened."""
    storage = await SQLiteStorage.open(settings)
    await storage.close()
    path = settings.sqlite_path
    with path.open("r+b") as f:  # keep the 100-byte header, ruin the schema page behind it
        f.seek(100)
        f.write(b"\xff" * 3000)
    with pytest.raises(StartupError, match=r"is damaged \(.*\); restore it from a backup"):
        await SQLiteStorage.open(settings)


async def test_concurrent_writes_share_one_transaction(storage: SQLiteStorage) -> None:
    """Writes to many resources submitted together are committed in one batch."""
    before = storage.batches
    results = await asyncio.gather(
        *(storage.apply_counter_ops(f"c{i}", [Increment(i)]) for i in range(50))
    )
    assert [values(r) for r in results] == [[i] for i in range(50)]
    assert storage.batches - before <= 2
    listed = await storage.list_counters("c", "", 100)
    assert [(c.name, c.value) for c in listed] == sorted((f"c{i}", i) for i in range(50))


async def test_failing_unit_rolls_back_only_itself(storage: SQLiteStorage) -> None:
    """A unit that fails after writing is rolled back to its savepoint; its batch-mates commit."""

    def broken(conn: sqlite3.Connection, pending: Pending) -> None:
        conn.execute("INSERT INTO counters (name, value) VALUES ('half', 1)")
        raise ValueError("boom")

    good = storage.apply_counter_ops("good", [Increment(1)])
    bad = storage._writer.submit(broken)
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert values(results[0]) == [1]
    assert isinstance(results[1], ValueError)
    assert await storage.get_counter("good") == Counter("good", 1, 1)
    assert await storage.get_counter("half") is None


async def test_lone_failing_unit_writes_nothing(storage: SQLiteStorage) -> None:
    """A batch's only unit failing after writing leaves no row and no revision behind."""

    def broken(conn: sqlite3.Connection, pending: Pending) -> None:
        conn.execute("INSERT INTO counters (name, value) VALUES ('half', 1)")
        raise ValueError("boom")

    await storage.apply_counter_ops("before", [Increment(1)])
    revision, _ = await storage.feed()
    with pytest.raises(ValueError, match="boom"):
        await storage._writer.submit(broken)
    assert await storage.get_counter("half") is None
    assert await storage.feed() == (revision, 0)
    assert values(await storage.apply_counter_ops("after", [Increment(1)])) == [1]
    assert (await storage.feed())[0] == revision + 1


async def test_readonly_database_answers_storage_unavailable(
    settings: Settings, storage: SQLiteStorage
) -> None:
    """A write the database refuses maps to StorageUnavailable (503), not a crash."""

    def refuse(conn: sqlite3.Connection, pending: Pending) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    with pytest.raises(StorageUnavailable):
        await storage._writer.submit(refuse)
    assert values(await storage.apply_counter_ops("after", [Increment(1)])) == [1]


async def test_ping_fails_cleanly_once_closed(settings: Settings) -> None:
    """ping() reads the database file and reports a closed storage as StorageUnavailable."""
    storage = await SQLiteStorage.open(settings)
    await storage.ping()
    await storage.close()
    with pytest.raises(StorageUnavailable):
        await storage.ping()


async def test_plain_writes_of_a_batch_share_one_group(storage: SQLiteStorage) -> None:
    """Many counters and records in one transaction: each op still gets its own outcome.

    Creating, overflowing (an outcome of its own, not a failure of the group), deleting,
    leaving unchanged, records with a failed precondition, and a unit that claims an
    Idempotency-Key all run in the same batch.
    """
    await storage.apply_counter_ops("big", [SetValue(INT64_MAX)])
    await storage.apply_counter_ops("gone", [SetValue(5)])
    await storage.apply_record_ops("doc", [PutRecord({"a": 1})])
    claim = Claim("key-1", "fp", lambda o: Rendered(200, {}, b"%d" % o.counter.value))
    before = storage.batches
    results: list[list[Any]] = await asyncio.gather(
        storage.apply_counter_ops("new", [Increment(2), Increment(3)]),
        storage.apply_counter_ops("big", [Increment(1), Increment(-1)]),
        storage.apply_counter_ops("gone", [DeleteCounter()]),
        storage.apply_counter_ops("same", [Increment(1), Increment(-1)]),
        storage.apply_counter_ops("claimed", [Increment(7, claim)]),
        storage.apply_record_ops(
            "doc", [PatchRecord({"b": 2}), PutRecord({}, Precondition(if_match=frozenset({9})))]
        ),
        storage.apply_record_ops("fresh", [PutRecord({"x": True})]),
    )
    assert storage.batches - before == 1
    new, big, gone, same, claimed, doc, fresh = results
    assert values(new) == [2, 5]
    assert isinstance(big[0], OutOfRange) and value(big[1]) == INT64_MAX - 1
    assert values(gone) == [None]
    assert values(same) == [1, 0]
    assert values(claimed) == [7]
    assert isinstance(doc[0], Written) and doc[0].record.value == {"a": 1, "b": 2}
    assert doc[0].record.version == 2
    assert isinstance(doc[1], PreconditionFailed)
    assert isinstance(fresh[0], Written) and fresh[0].created
    assert await storage.get_counter("new") == Counter("new", 5, 2)
    assert await storage.get_counter("big") == Counter("big", INT64_MAX - 1, 2)
    assert await storage.get_counter("gone") is None
    # Created at 0, like one increment at a time.
    assert await storage.get_counter("same") == Counter("same", 0, 2)
    assert await storage.get_counter("claimed") == Counter("claimed", 7, 1)
    record = await storage.get_record("doc")
    assert record is not None and record.value == {"a": 1, "b": 2} and record.version == 2


async def test_unit_that_raises_fails_alone_in_its_group(storage: SQLiteStorage) -> None:
    """A write whose computation raises gets its error and writes nothing; its group commits.

    Keyed and unkeyed writes share the group: the failing one claims a key whose response
    cannot be rendered, so neither its change, nor its log entry, nor its key is stored.
    """

    def unrenderable(outcome: Any) -> Rendered:
        raise ValueError("cannot render")

    def render(outcome: Any) -> Rendered:
        return Rendered(200, {}, b"%d" % value(outcome))

    bad = Claim("key-bad", "fp", unrenderable)
    good = Claim("key-good", "fp", render)
    before = storage.batches
    revision, _ = await storage.feed()
    results = await asyncio.gather(
        storage.apply_counter_ops("plain", [Increment(1)]),
        storage.apply_counter_ops("broken", [Increment(5, bad)]),
        storage.apply_counter_ops("keyed", [Increment(2, good)]),
        return_exceptions=True,
    )
    assert storage.batches - before == 1
    assert values(results[0]) == [1]
    assert isinstance(results[1], ValueError)
    assert values(results[2]) == [2]
    assert await storage.get_counter("plain") == Counter("plain", 1, 1)
    assert await storage.get_counter("broken") is None
    assert await storage.get_counter("keyed") == Counter("keyed", 2, 1)
    page = await storage.read_changes(revision, 100)
    assert sorted(c.key for c in page.changes) == ["keyed", "plain"]
    replayed, retried = await asyncio.gather(
        storage.apply_counter_ops("keyed", [Increment(2, good)]),
        storage.apply_counter_ops("broken", [Increment(5, Claim("key-bad", "fp", render))]),
    )
    assert replayed == [Replay(Rendered(200, {}, b"2"))]
    assert values(retried) == [5]


async def test_failed_group_write_rolls_back_the_group_only(
    settings: Settings, storage: SQLiteStorage
) -> None:
    """A statement failing midway through the group's write undoes the whole group.

    Protection: the savepoint around the group in _run_transaction. Without it the rows
    written before the failing one ("a1") would be committed with the rest of the batch
    although their requests were answered with an error.
    """
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON counters WHEN NEW.name = 'poison'"
            " BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )
    results = await asyncio.gather(
        storage.apply_counter_ops("a1", [Increment(1)]),
        storage.apply_counter_ops("poison", [Increment(1)]),
        storage.apply_record_ops("other-table", [PutRecord({})]),
        return_exceptions=True,
    )
    for failed in results[:2]:
        assert isinstance(failed, StorageUnavailable)
        assert isinstance(failed.__cause__, sqlite3.IntegrityError)
    assert isinstance(results[2], list) and isinstance(results[2][0], Written)
    assert await storage.get_counter("a1") is None
    assert await storage.get_record("other-table") is not None
    assert values(await storage.apply_counter_ops("a1", [Increment(1)])) == [1]
