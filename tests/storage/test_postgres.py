"""The PostgreSQL backend: migrations under concurrent startup, cross-host locking, failures."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from app.domain import (
    CounterOp,
    Increment,
    PatchRecord,
    Precondition,
    PutRecord,
    RecordOp,
    SetValue,
    Written,
)
from app.errors import PreconditionFailed, StorageUnavailable
from app.idempotency import Claim, KeyReused, Rendered, Replay
from app.settings import Settings
from app.startup import StartupError
from app.storage.postgres import PostgresStorage
from app.storage.postgres.schema import MIGRATIONS, lock_key
from tests.conftest import backend_settings, settings_for
from tests.outcomes import value, values
from tests.storage.busy import busy_turns
from tests.support import free_port, wait_for

pytestmark = pytest.mark.backends("postgres")


async def test_concurrent_startup_migrates_exactly_once(settings: Settings) -> None:
    """Eight instances opening one empty database at once all start, and each migration ran once."""
    opened = await asyncio.gather(*(PostgresStorage.open(settings) for _ in range(8)))
    try:
        conn = await asyncpg.connect(settings.database_url)
        try:
            rows = await conn.fetch("SELECT version FROM lockstep_migrations ORDER BY version")
        finally:
            await conn.close()
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(s.close() for s in opened))


async def test_startup_on_a_newer_schema_is_refused_and_changes_nothing(
    settings: Settings,
) -> None:
    """A database migrated past this code's last migration stops startup and is left as it was."""
    storage = await PostgresStorage.open(settings)
    try:
        await storage.apply_record_ops("doc", [PutRecord({"a": 1})])
    finally:
        await storage.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        newer = len(MIGRATIONS) + 1
        await conn.execute("INSERT INTO lockstep_migrations (version) VALUES ($1)", newer)
        snapshot = (
            "SELECT (SELECT array_agg(version ORDER BY version) FROM lockstep_migrations),"
            " (SELECT array_agg(table_name::text ORDER BY table_name)"
            "  FROM information_schema.tables WHERE table_schema = current_schema()),"
            " (SELECT array_agg(row(id, value, version)::text) FROM items)"
        )
        before = await conn.fetchrow(snapshot)
        assert before is not None and before[0] == list(range(1, newer + 1))
        with pytest.raises(StartupError, match=f"schema is at version {newer}, newer than this"):
            await PostgresStorage.open(settings)
        assert await conn.fetchrow(snapshot) == before
    finally:
        await conn.close()


async def test_new_counter_from_many_hosts_counts_exactly_once(settings: Settings) -> None:
    """Four pools creating the same new counters concurrently hand out each value exactly once."""
    hosts = [await PostgresStorage.open(settings) for _ in range(4)]
    try:
        for round_ in range(10):
            name = f"fresh{round_}"
            results = await asyncio.gather(
                *(h.apply_counter_ops(name, [Increment(1)]) for h in hosts for _ in range(5))
            )
            assert sorted(value(r[0]) for r in results) == list(range(1, 21))
            assert value(await hosts[0].get_counter(name)) == 20
    finally:
        await asyncio.gather(*(h.close() for h in hosts))


async def test_patches_from_many_hosts_all_land(settings: Settings) -> None:
    """Concurrent PATCHes of one record through four pools each land once: no lost update."""
    hosts = [await PostgresStorage.open(settings) for _ in range(4)]
    try:
        await hosts[0].apply_record_ops("doc", [PutRecord({})])
        results = await asyncio.gather(
            *(hosts[i % 4].apply_record_ops("doc", [PatchRecord({f"f{i}": i})]) for i in range(40))
        )
        versions = sorted(r[0].record.version for r in results if isinstance(r[0], Written))
        assert versions == list(range(2, 42))
        record = await hosts[1].get_record("doc")
        assert record is not None
        assert (record.value, record.version) == ({f"f{i}": i for i in range(40)}, 41)
    finally:
        await asyncio.gather(*(h.close() for h in hosts))


async def test_same_if_match_from_many_hosts_lets_exactly_one_write_win(
    settings: Settings,
) -> None:
    """Four pools racing PUTs and PATCHes with one If-Match per record: one wins, the rest 412."""
    hosts = [await PostgresStorage.open(settings) for _ in range(4)]
    at_v1 = Precondition(if_match=frozenset({1}))

    def contender(h: int) -> RecordOp:
        # Even hosts replace the document, odd ones merge into it.
        return PatchRecord({"by": h}, at_v1) if h % 2 else PutRecord({"by": h}, at_v1)

    try:
        for round_ in range(5):
            ids = [f"doc{round_}-{n}" for n in range(25)]
            await asyncio.gather(
                *(hosts[0].apply_record_ops(i, [PutRecord({"base": 0})]) for i in ids)
            )
            # Each host commits its 25 units in one transaction, racing the other three.
            # The rows exist, so the advisory locks and FOR UPDATE each serialize these
            # alone; with neither, every host reads version 1 and all four "win".
            results = await asyncio.gather(
                *(
                    asyncio.gather(*(host.apply_record_ops(i, [contender(h)]) for i in ids))
                    for h, host in enumerate(hosts)
                )
            )
            for n, i in enumerate(ids):
                outcomes = [results[h][n][0] for h in range(4)]
                winners = [o for o in outcomes if isinstance(o, Written)]
                assert len(winners) == 1, (i, outcomes)
                assert sum(isinstance(o, PreconditionFailed) for o in outcomes) == 3, outcomes
                record = await hosts[n % 4].get_record(i)
                assert record == winners[0].record
                by = record.value["by"]
                assert record.value == {"by": by} | ({"base": 0} if by % 2 else {})
                assert record.version == 2
    finally:
        await asyncio.gather(*(h.close() for h in hosts))


async def test_failing_unit_writes_nothing_and_batch_mates_commit(storage: PostgresStorage) -> None:
    """A unit that cannot be stored fails alone; the units committed with it still land."""
    good = storage.apply_counter_ops("good", [Increment(1)])
    bad = storage.apply_record_ops("bad", [PutRecord(object())])
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert values(results[0]) == [1]
    assert isinstance(results[1], TypeError)
    assert value(await storage.get_counter("good")) == 1
    assert await storage.get_record("bad") is None


async def test_writes_hand_back_the_writers_own_future(storage: PostgresStorage) -> None:
    """A write returns the writer's future itself, so a combiner's batch needs no task."""
    pending = storage.apply_counter_ops("c", [Increment(2)])
    assert isinstance(pending, asyncio.Future)
    assert not isinstance(pending, asyncio.Task)
    assert values(await pending) == [2]


@pytest.mark.parametrize(("gather", "one_commit"), [(0, False), (8, True)])
async def test_a_busy_loop_gathers_writes_into_one_transaction(
    tmp_path: Path, gather: int, one_commit: bool
) -> None:
    """With ``commit_gather``, writes arriving over the next busy loop turns share a commit."""
    async with backend_settings("postgres", tmp_path, commit_gather=gather) as settings:
        storage = await PostgresStorage.open(settings)
        try:
            writes: list[asyncio.Future[Any]] = []

            def put(n: int) -> None:
                writes.append(
                    asyncio.ensure_future(storage.apply_record_ops(f"i{n}", [PutRecord(n)]))
                )

            put(0)
            await busy_turns(12, [partial(put, n) for n in (1, 2, 3)])
            await asyncio.gather(*writes)
            assert (storage.batches == 1) is one_commit, storage.batches
        finally:
            await storage.close()


async def test_timed_out_write_rolls_back_and_the_next_one_works(tmp_path: Path) -> None:
    """A write stuck past the command timeout answers 503, writes nothing, and frees its locks."""
    async with backend_settings("postgres", tmp_path, pg_command_timeout=0.5) as settings:
        storage = await PostgresStorage.open(settings)
        blocker = await asyncpg.connect(settings.database_url)
        try:
            await storage.apply_counter_ops("free", [Increment(1)])
            # Another host holds the counter's lock for longer than the timeout.
            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute("SELECT pg_advisory_xact_lock($1)", lock_key("counter:c"))
            with pytest.raises(StorageUnavailable):
                await storage.apply_counter_ops("c", [Increment(1), Increment(1)])
            await storage.apply_counter_ops("free", [Increment(1)])
            await blocking.rollback()
            assert values(await storage.apply_counter_ops("c", [Increment(5)])) == [5]
            assert value(await storage.get_counter("free")) == 2
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
            )
            assert waiting == 0
        finally:
            await blocker.close()
            await storage.close()


async def test_killed_connections_answer_503_or_reconnect(storage: PostgresStorage) -> None:
    """When the server kills every pooled connection, the next calls reconnect by themselves."""
    settings_url = storage._pool._connect_args[0]  # type: ignore[attr-defined]
    admin = await asyncpg.connect(settings_url)
    try:
        await asyncio.gather(
            *(storage.apply_counter_ops(f"c{i}", [Increment(1)]) for i in range(20))
        )
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'lockstep' AND datname = current_database()"
        )
        assert killed >= 1
        assert value(await storage.get_counter("c0")) == 1
        assert values(await storage.apply_counter_ops("c0", [Increment(1)])) == [2]
        await storage.ping()
    finally:
        await admin.close()


async def test_statement_cache_size_zero_prepares_nothing_named(tmp_path: Path) -> None:
    """With LOCKSTEP_PG_STATEMENT_CACHE_SIZE=0 no named prepared statement outlives a call."""
    for cache, expect_named in ((0, False), (100, True)):
        async with backend_settings(
            "postgres",
            tmp_path,
            pg_statement_cache_size=cache,
            pg_pool_min_size=1,
            pg_pool_max_size=1,
            pg_writers=1,
        ) as settings:
            storage = await PostgresStorage.open(settings)
            try:
                await storage.apply_counter_ops("c", [SetValue(1)])
                await storage.apply_counter_ops("c", [Increment(1)])
                await storage.apply_record_ops("doc", [PutRecord({"a": 1})])
                assert value(await storage.get_counter("c")) == 2
                rows = await storage._read("SELECT name FROM pg_prepared_statements")
                assert bool(rows) is expect_named, (cache, rows)
            finally:
                await storage.close()


async def wait_for_lockstep_backends(conn: asyncpg.Connection, where: str, count: int) -> None:
    """Poll until exactly ``count`` of the storage's server backends match ``where``."""
    async with asyncio.timeout(10):
        while True:
            # pg_stat_activity is a snapshot taken once per transaction: take a new one.
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lockstep'"
                f" AND datname = current_database() AND ({where})"
            )
            if found == count:
                return
            await asyncio.sleep(0.02)


async def test_cancelled_write_is_rolled_back_and_its_connection_dropped(
    storage: PostgresStorage, settings: Settings
) -> None:
    """Cancelling a batch that waits on a lock inside its transaction ends it on the server."""
    blocker = await asyncpg.connect(settings.database_url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT pg_advisory_xact_lock($1)", lock_key("counter:c"))
        write = asyncio.ensure_future(storage.apply_counter_ops("c", [SetValue(5)]))
        await wait_for_lockstep_backends(blocker, "wait_event = 'advisory'", 1)
        for task in list(storage._writer._inflight):
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        # Still holding the lock: the storage's transaction must be gone by its own doing.
        await wait_for_lockstep_backends(blocker, "xact_start IS NOT NULL", 0)
        await blocking.rollback()
        assert await storage.get_counter("c") is None
        assert values(await storage.apply_counter_ops("c", [Increment(1)])) == [1]
    finally:
        await blocker.close()


async def test_unreachable_server_at_startup_fails_after_the_startup_timeout(
    tmp_path: Path,
) -> None:
    """With nothing listening, opening retries for pg_startup_timeout, then says why it failed."""
    url = f"postgresql://nobody:nothing@127.0.0.1:{free_port()}/none"
    settings = settings_for(tmp_path, database_url=url, pg_startup_timeout=0.6)
    started = time.monotonic()
    with pytest.raises(StartupError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:"):
        await PostgresStorage.open(settings)
    assert 0.5 <= time.monotonic() - started < 10


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite:/relative.db", "http://x"])
def test_database_url_with_unknown_scheme_is_refused(tmp_path: Path, url: str) -> None:
    """A LOCKSTEP_DATABASE_URL naming no supported backend stops startup with a clear error."""
    with pytest.raises(
        ValidationError, match="should start with sqlite:///, postgresql:// or postgres://"
    ):
        settings_for(tmp_path, database_url=url)


async def test_wait_for_change_wakes_on_another_hosts_commit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter on one pool returns once another pool commits, via the confirming pass too."""
    watcher = await PostgresStorage.open(settings)
    writer = await PostgresStorage.open(settings)
    try:
        mark = await watcher.wait_for_change(-1)
        async with asyncio.timeout(5):
            mark = await watcher.wait_for_change(mark)  # the confirming pass
        assert mark % 2 == 1
        polls = 0
        read = watcher._read

        async def counted_read(*args: Any) -> Any:
            nonlocal polls
            rows = await read(*args)
            polls += 1
            return rows

        monkeypatch.setattr(watcher, "_read", counted_read)
        waiting = asyncio.ensure_future(watcher.wait_for_change(mark))
        # It has polled once (other databases' commits on the server may end it early).
        await wait_for(lambda: polls >= 1)
        await writer.apply_counter_ops("seen", [Increment(1)])
        async with asyncio.timeout(5):
            new_mark = await waiting
        assert new_mark != mark
        assert value(await watcher.get_counter("seen")) == 1
    finally:
        await watcher.close()
        await writer.close()


def claim(key: str, fingerprint: str) -> Claim:
    return Claim(key, fingerprint, lambda outcome: Rendered(200, {}, repr(outcome).encode()))


async def test_one_key_on_two_hosts_at_once_applies_once(settings: Settings) -> None:
    """The same Idempotency-Key sent to two hosts at once changes state once; the rest replay."""
    hosts = [await PostgresStorage.open(settings) for _ in range(2)]
    try:
        same: list[CounterOp] = [Increment(1, claim("k-same", "fp-same"))]
        results = await asyncio.gather(
            *(hosts[i % 2].apply_counter_ops("c", same) for i in range(10))
        )
        outcomes = [r[0] for r in results]
        assert sorted(isinstance(o, Replay) for o in outcomes) == [False] + [True] * 9
        assert value(await hosts[0].get_counter("c")) == 1
        # One key, two different requests on two resources at once: exactly one applies.
        for round_ in range(10):
            key = f"k-other-{round_}"
            a: list[CounterOp] = [Increment(1, claim(key, "fp-a"))]
            b: list[CounterOp] = [Increment(1, claim(key, "fp-b"))]
            pair = await asyncio.gather(
                hosts[0].apply_counter_ops(f"a{round_}", a),
                hosts[1].apply_counter_ops(f"b{round_}", b),
            )
            assert sum(isinstance(o[0], KeyReused) for o in pair) == 1
            stored = [value(await hosts[0].get_counter(f"{x}{round_}")) for x in "ab"]
            assert sorted(stored, key=str) == [1, None]
    finally:
        await asyncio.gather(*(h.close() for h in hosts))
