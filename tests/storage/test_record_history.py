"""A record's history on every backend: its versions, and a snapshot's deferred value."""

from __future__ import annotations

from pathlib import Path

from app.changes import Change
from app.domain import DeleteRecord, PutRecord
from app.storage import Storage
from app.storage.backends import open_storage
from tests.conftest import settings_for
from tests.storage.older import database_at

FUTURE = "9999-01-01T00:00:00.000Z"  # a purge cutoff every entry is older than


def summary(changes: list[Change]) -> list[tuple[int, str, str, str | None, int | None]]:
    return [(c.revision, c.kind, c.key, c.value, c.version) for c in changes]


def snapshot_of(key: str, version: int, revision: int) -> Change:
    return Change(revision, "item", key, None, version, FUTURE, True)


async def test_deferred_snapshot_value_is_the_version_as_of_the_snapshot(storage: Storage) -> None:
    """A snapshot's deferred value is its version's entry, or the record if nothing changed it."""
    await storage.apply_record_ops("doc", [PutRecord("a")])
    await storage.apply_record_ops("other", [PutRecord(0)])
    await storage.apply_record_ops("doc", [PutRecord("b")])
    revision, _ = await storage.feed()
    assert await storage.deferred_value(snapshot_of("doc", 1, 1), snapshot=True) == '"a"'
    assert await storage.deferred_value(snapshot_of("doc", 2, revision), snapshot=True) == '"b"'
    assert await storage.deferred_value(snapshot_of("doc", 1, revision), snapshot=True) == '"a"'
    assert await storage.purge_changes(FUTURE, 100) == 3
    # Nothing changed it since: the record itself; changed since, its version is gone.
    assert await storage.deferred_value(snapshot_of("doc", 2, revision), snapshot=True) == '"b"'
    await storage.apply_record_ops("doc", [PutRecord("c")])
    assert await storage.deferred_value(snapshot_of("doc", 2, revision), snapshot=True) is None
    await storage.apply_record_ops("doc", [DeleteRecord()])
    assert await storage.deferred_value(snapshot_of("doc", 3, revision + 1), snapshot=True) == '"c"'


async def test_sqlite_history_from_before_the_chain_is_migrated(tmp_path: Path) -> None:
    """A database at schema 6 keeps every record's history, a deleted one's too, and goes on."""
    settings = settings_for(tmp_path)
    with database_at(settings, 6) as conn:
        t = "2026-01-01T00:00:00.000Z"
        conn.executemany(
            f"INSERT INTO changes VALUES (?, ?, ?, ?, ?, '{t}')",
            [
                (1, "item", "doc", '"a"', 1),
                (2, "item", "gone", '"x"', 1),
                (2, "counter", "c", "1", 1),
                (3, "item", "doc", '"b"', 2),
                (4, "item", "gone", None, None),
            ],
        )
        conn.execute(f"INSERT INTO items VALUES ('doc', '\"b\"', 2, '{t}')")
        conn.execute("UPDATE change_feed SET purged_through = 0")
    storage = await open_storage(settings)
    try:
        assert [c.version for c in await storage.record_versions("doc", 100, 10)] == [2, 1]
        assert [c.value for c in await storage.record_versions("gone", 100, 10)] == ['"x"']
        await storage.apply_record_ops("gone", [PutRecord("y")])
        await storage.apply_record_ops("doc", [DeleteRecord()])
        assert summary(await storage.record_versions("gone", 100, 10)) == [
            (5, "item", "gone", '"y"', 1),
            (2, "item", "gone", '"x"', 1),
        ]
        assert [c.version for c in await storage.record_versions("doc", 100, 10)] == [2, 1]
    finally:
        await storage.close()
