"""Writers on one SQLite file with nothing between them but SQLite's own write lock.

Each ``SQLiteStorage`` here stands for a gunicorn worker: its own connections, its own
writer thread. The ``flock`` writer turn is switched off, so what keeps them correct is
``BEGIN IMMEDIATE`` alone. (With the turn on, the 2-worker tests pass even with a deferred
``BEGIN``: the turn serializes the workers as well.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import app.storage.sqlite.transaction as sqlite_transaction
import app.storage.sqlite.writer as sqlite_writer
from app.domain import Increment, PatchRecord, Precondition, PutRecord, Written
from app.errors import PreconditionFailed, StorageUnavailable
from app.settings import Settings
from app.storage.sqlite import SQLiteStorage
from tests.conftest import settings_for
from tests.outcomes import value
from tests.storage.connections import WrappedConnection

WRITERS = 4
PREEMPTED_S = 0.0002  # how long a writer thread is off the CPU after each read


class _Preempted(WrappedConnection):
    """A writer's connection whose thread loses the CPU after every SELECT, as under load.

    It widens the gap between a transaction's read and its write, where another writer
    would slip in if anything but SQLite's write lock let it; nothing else changes.
    """

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        if sql.startswith("SELECT"):
            time.sleep(PREEMPTED_S)
        return cursor


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # One unit per transaction and no gathering: as many transactions as possible to
    # interleave. A writer may wait long for the lock (nothing makes them take turns fairly),
    # so the busy timeout is generous: this is about correctness, not latency.
    return settings_for(
        tmp_path, max_batch=1, commit_gather=0, synchronous="NORMAL", busy_timeout_ms=60_000
    )


@pytest.fixture
async def writers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[SQLiteStorage]]:
    """``WRITERS`` storages on one file whose batches skip the writer turn."""

    def without_turn(conn: sqlite3.Connection, units: Any, *_: Any) -> Any:
        return sqlite_transaction.run_transaction(_Preempted(conn), units)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_writer, "run_batch", without_turn)
    storages: list[SQLiteStorage] = []
    try:
        for _ in range(WRITERS):
            storages.append(await SQLiteStorage.open(settings))
        yield storages
    finally:
        for storage in storages:
            await storage.close()


async def test_increments_without_writer_turn_each_get_their_own_value(
    settings: Settings, writers: list[SQLiteStorage]
) -> None:
    """400 increments raced over 4 writers all succeed with values exactly 1..400: none lost.

    Protection: BEGIN IMMEDIATE takes the write lock before the counter is read, so a
    writer waits (busy_timeout) for the others. With a deferred BEGIN, SQLite's WAL
    snapshot check still prevents duplicates, but a writer whose snapshot went stale
    gets "database is locked", and increments fail with StorageUnavailable (503) here.
    """
    per_writer = 100

    async def run(storage: SQLiteStorage) -> list[Any]:
        return await asyncio.gather(
            *(storage.apply_counter_ops("hits", [Increment(1)]) for _ in range(per_writer)),
            return_exceptions=True,
        )

    answers = [a for batch in await asyncio.gather(*map(run, writers)) for a in batch]
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert errors == [], f"{len(errors)} of {len(answers)} failed, first: {errors[0]!r}"
    seen = sorted(value(answer) for (answer,) in answers)
    assert seen == list(range(1, WRITERS * per_writer + 1))
    with sqlite3.connect(settings.sqlite_path) as db:
        assert db.execute("SELECT value FROM counters WHERE name = 'hits'").fetchone() == (
            WRITERS * per_writer,
        )


async def test_patches_with_same_if_match_without_writer_turn_one_wins(
    writers: list[SQLiteStorage],
) -> None:
    """4 writers each PATCH 200 records with If-Match "1" at once: per record one wins, 3 get 412.

    Protection: the precondition is checked against the record read inside the
    BEGIN IMMEDIATE transaction that writes it. With a deferred BEGIN no two PATCHes of a
    record both win either (the WAL snapshot check refuses the stale one), but losers fail
    with StorageUnavailable (503) instead of PreconditionFailed (412).
    """
    docs = [f"doc{i}" for i in range(200)]
    for put in await asyncio.gather(
        *(writers[0].apply_record_ops(d, [PutRecord({})]) for d in docs)
    ):
        assert isinstance(put[0], Written) and put[0].created
    if_match = Precondition(if_match=frozenset({1}))

    async def patch(doc: str, who: int) -> Any:
        try:
            [outcome] = await writers[who].apply_record_ops(
                doc, [PatchRecord({"by": who}, if_match)]
            )
        except StorageUnavailable as e:
            return e
        return outcome

    outcomes = await asyncio.gather(*(patch(d, w) for d in docs for w in range(WRITERS)))
    for n, doc in enumerate(docs):
        mine = outcomes[n * WRITERS : (n + 1) * WRITERS]
        winners = [o for o in mine if isinstance(o, Written)]
        losers = [o for o in mine if isinstance(o, PreconditionFailed)]
        assert (len(winners), len(losers)) == (1, WRITERS - 1), (doc, mine)
        record = await writers[0].get_record(doc)
        assert record is not None
        assert (record.version, record.value) == (2, winners[0].record.value)
