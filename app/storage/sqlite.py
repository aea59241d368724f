"""SQLite backend: one writer connection with group commit, one reader connection, per worker.

Cross-process correctness comes from SQLite itself: every write batch runs as one
``BEGIN IMMEDIATE ... COMMIT`` transaction, which takes the database's single write lock
before reading the state it modifies, so another gunicorn worker can never interleave.
Inside this process all writes go through one writer task, so no two coroutines ever mix
statements of different transactions on the connection, and a whole batch (many
resources, many requests) costs one thread hop and one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import aiosqlite
import msgspec

from app.changes import Change, FeedPage, counter_changes, item_changes, snapshot_page
from app.clock import KeyTimes, ServiceClock
from app.combining import Batch, OpenBatch, ops_of
from app.domain import (
    NAME_CEILING,
    Counter,
    CounterOp,
    CounterOutcome,
    ItemOp,
    ItemOutcome,
    Record,
    apply_counter_ops,
    apply_item_ops,
    now_iso,
)
from app.errors import StorageUnavailable
from app.idempotency import (
    Claimable,
    Rendered,
    Stored,
    claimed_keys,
    merge,
    to_store,
    triage,
)
from app.settings import Settings
from app.startup import StartupError
from app.storage import StorageObserver, sqlite_changes
from app.storage.batching import BatchQueue, Outcome
from app.storage.sqlite_changes import Pending
from app.storage.sqlite_file import DatabaseFile, connect_uri, write_marker
from app.storage.sqlite_reads import BatchedReader
from app.storage.sqlite_turn import TurnClaim, TurnKeeper, turn

logger = logging.getLogger(__name__)

T = TypeVar("T")
Op = TypeVar("Op", bound=Claimable)
W = TypeVar("W", bound="_Writes[Any]")


class _Writes(Generic[Op]):
    """One resource's queued ops with no Idempotency-Key among them: the usual write.

    All of a batch's plain writes to one table are run together, in one savepoint: one
    SELECT reads every resource they touch, the ops are applied in memory, and one
    ``executemany`` writes the results back, instead of a savepoint, a read and a write per
    resource. Every op's own failure (an overflow, a failed precondition) is an outcome
    computed in Python before anything is written, so what can still fail is the write
    itself, for reasons (disk full, I/O) no single request causes; then the whole group
    fails together, and units outside it are unaffected.
    """

    __slots__ = ("key", "ops")

    def __init__(self, key: str, ops: list[Op]) -> None:
        self.key = key
        self.ops = ops

    @classmethod
    def write_all(
        cls: type[W], conn: sqlite3.Connection, writes: list[W], pending: Pending
    ) -> list[list[Any]]:
        raise NotImplementedError


# A unit of work: runs inside the batch's write transaction on the writer thread, and adds
# the change-log entries of what it changed to ``pending``.
UnitFn = Callable[[sqlite3.Connection, Pending], Any]
Unit = UnitFn | _Writes[Any]


class _Later:
    """A unit made only when its batch starts, so a combiner's batch stays open until then."""

    __slots__ = ("_batch", "_key", "_make")

    def __init__(self, make: Callable[[str, Any], Unit], key: str, batch: Batch[Any]) -> None:
        self._make = make
        self._key = key
        self._batch = batch

    def make(self) -> Unit:
        return self._make(self._key, self._batch)


# Failures that say the disk refuses writes, reported by /readyz until a write succeeds.
WRITE_TROUBLE = frozenset({"full", "io", "readonly"})
MIN_SQLITE = (3, 35, 0)  # RETURNING, and the UPSERT forms used here
CHECKPOINT_WAIT_MS = 50  # longest a checkpoint waits for readers before giving up this time
CHECKPOINT_RETRY_S = 0.5  # after a reader blocked a checkpoint, the next try waits this long

# Schema versions, applied in order; PRAGMA user_version records how many have run.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE items (id TEXT PRIMARY KEY, value TEXT NOT NULL,"
        " version INTEGER NOT NULL, updated_at TEXT NOT NULL) WITHOUT ROWID",
    ],
    [
        # One row per Idempotency-Key: the request's fingerprint and its complete response,
        # inserted in the same transaction as the change it answers.
        "CREATE TABLE idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
        " status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,"
        " expires_at REAL NOT NULL)",
        "CREATE INDEX idempotency_expiry ON idempotency (expires_at)",
    ],
    sqlite_changes.MIGRATION,
]


def _translate(e: BaseException) -> BaseException:
    """Map every SQLite failure (locked, read-only, full, I/O, not a database ...) to a 503."""
    if isinstance(e, sqlite3.Error):
        error = StorageUnavailable(f"database: {e}")
        error.__cause__ = e
        return error
    return e


_KINDS = {
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_READONLY: "readonly",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_IOERR: "io",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}


def _error_kind(e: BaseException) -> str | None:
    """The bounded metric kind of a database error, or None for anything else."""
    if not isinstance(e, sqlite3.Error):
        return None
    code = getattr(e, "sqlite_errorcode", None)
    # Extended result codes carry the primary code in their low byte.
    return _KINDS.get(code & 0xFF, "other") if code is not None else "other"


async def _in_db_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(raw_connection, *args)`` on the connection's own thread in one hop.

    aiosqlite hops threads once per call; a whole batch runs here as one function, so
    it costs one hop and the event loop can never interleave a foreign statement.
    ``_execute`` is aiosqlite's own queueing primitive (stable since 0.17).
    """
    result: T = await db._execute(lambda: fn(db._conn, *args))  # type: ignore[no-untyped-call]
    return result


def _run_batch(
    conn: sqlite3.Connection,
    units: list[Unit],
    turn_fd: int,
    db_file: DatabaseFile,
    claim: TurnClaim,
) -> list[tuple[bool, Any]]:
    """Run ``units`` in one write transaction; a failing unit rolls back to its savepoint.

    Before and after, the database path must still name the file this worker writes to
    (``app.storage.sqlite_file``): a commit into a deleted file is not acknowledged.

    Workers take turns through an exclusive ``flock`` on a lock file beside the database
    before ``BEGIN IMMEDIATE``. SQLite's write lock alone is what makes this correct, but
    a writer that finds it taken sleeps in SQLite's busy handler for 1, 2, 5 … 100 ms,
    while a writer blocked in ``flock`` is woken by the kernel the moment the other
    worker commits. The kernel drops the lock if its holder dies.
    """
    db_file.check()
    with turn(turn_fd, claim):  # the loop waits for it at most the busy timeout
        results = _run_transaction(conn, units)
    db_file.check()
    return results


def _run_transaction(conn: sqlite3.Connection, units: list[Unit]) -> list[tuple[bool, Any]]:
    """Each unit's ``(ok, result or error)``, in order, once they have all committed.

    Plain writes (``_Writes``) of one table are run as one group; anything else runs alone
    under a savepoint of its own.
    """
    results: list[tuple[bool, Any]] = [(False, None)] * len(units)
    groups: dict[type[_Writes[Any]], list[tuple[int, _Writes[Any]]]] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        pending = Pending.open(conn)
        for i, unit in enumerate(units):
            if isinstance(unit, _Writes):
                groups.setdefault(type(unit), []).append((i, unit))
            else:
                results[i] = _in_savepoint(conn, pending, unit)
        for kind, group in groups.items():
            writes = [w for _, w in group]
            write_group = partial(_write_group, kind, writes)
            ok, value = _in_savepoint(conn, pending, write_group)
            for n, (i, _) in enumerate(group):
                results[i] = (True, value[n]) if ok else (False, value)
        # The change-log entries commit with the changes they describe, or not at all.
        pending.write(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("rollback failed")
        raise
    return results


def _write_group(
    kind: type[_Writes[Any]], writes: list[_Writes[Any]], conn: sqlite3.Connection, pending: Pending
) -> list[list[Any]]:
    return kind.write_all(conn, writes, pending)


def _in_savepoint(conn: sqlite3.Connection, pending: Pending, unit: UnitFn) -> Any:
    """``(True, result)``, or ``(False, error)`` with the unit's statements and entries undone."""
    conn.execute("SAVEPOINT unit")
    produced = len(pending.entries)
    try:
        result = unit(conn, pending)
    except Exception as e:
        conn.execute("ROLLBACK TO unit")
        conn.execute("RELEASE unit")
        del pending.entries[produced:]
        return False, e
    conn.execute("RELEASE unit")
    return True, result


def _checkpoint(
    conn: sqlite3.Connection, turn_fd: int, busy_timeout_ms: int, claim: TurnClaim
) -> tuple[int, int, int]:
    """Checkpoint the whole WAL and truncate it to zero bytes, if no reader still needs it.

    Runs between batches in this worker's writer turn. Waiting for readers is capped at a
    short busy timeout, so a long-lived reader costs a skipped checkpoint, not stalled writes.
    """
    with turn(turn_fd, claim):
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return busy, log, done


class _Writer(BatchQueue["Unit | _Later"]):
    """The worker's only writer: queues units and commits them in batches, in order.

    A combiner's batch arrives as a ``_Later``: its unit is made, and the combiner's queue
    for that resource taken, only when the batch starts, after the queue has gathered.

    Between batches it keeps the WAL bounded: once the WAL file is larger than
    ``wal_limit`` bytes it runs a TRUNCATE checkpoint (SQLite's own PASSIVE autocheckpoint
    cannot shrink the file, and never completes while readers keep using the WAL).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        max_batch: int,
        turn_fd: int,
        db_file: DatabaseFile,
        wal_path: str = "",
        wal_limit: int = 0,
        busy_timeout_ms: int = 5000,
        observer: StorageObserver | None = None,
        gather: int = 0,
    ) -> None:
        super().__init__(max_batch, "lockstep-sqlite-writer", gather)
        self._db = db
        self._turn_fd = turn_fd
        self._turns = TurnKeeper(busy_timeout_ms / 1000)
        self._db_file = db_file
        self._wal_path = wal_path
        self._wal_limit = wal_limit
        self._busy_timeout_ms = busy_timeout_ms
        self._next_checkpoint = 0.0
        self.checkpoints = 0  # completed TRUNCATE checkpoints, for tests and metrics
        self._observer = observer
        self.batches = 0  # committed transactions, for tests and metrics
        # Why writes have been failing (disk full, I/O, read-only), until one succeeds.
        self.trouble: str | None = None

    async def _run_batch(self, items: list[Unit | _Later]) -> list[Outcome]:
        started = time.perf_counter()
        try:
            # A combiner's batch is taken here, after the queue gathered (app.combining).
            units = [i.make() if isinstance(i, _Later) else i for i in items]
            results = await self._turns.run(
                partial(_in_db_thread, self._db, _run_batch, units, self._turn_fd, self._db_file)
            )
        except Exception as e:
            self._report(e)
            error = _translate(e)
            if not isinstance(error, StorageUnavailable):
                logger.exception("write batch failed")
            return [(False, error)] * len(items)
        self.batches += 1
        writes = sum(item is not _probe for item in items)  # /readyz's probe is no request
        if self._observer is not None and writes:
            self._observer.committed(time.perf_counter() - started, writes)
        outcomes: list[Outcome] = []
        for item, (ok, value) in zip(items, results, strict=True):
            if not ok:
                self._report(value)
                value = _translate(value)
            elif item is not _probe:  # a write that went through: the trouble is over
                self.trouble = None
            outcomes.append((ok, value))
        return outcomes

    @property
    def stalled(self) -> str | None:
        """Why writes cannot progress now (the write turn is stuck elsewhere), if they cannot."""
        return self._turns.stalled

    async def _after_batch(self) -> None:
        if self._wal_limit:
            await self._bound_wal()

    async def _bound_wal(self) -> None:
        now = time.monotonic()
        if now < self._next_checkpoint or self._turns.stalled:
            return
        try:
            if os.stat(self._wal_path).st_size <= self._wal_limit:
                return
            busy, _, _ = await self._turns.run(
                partial(_in_db_thread, self._db, _checkpoint, self._turn_fd, self._busy_timeout_ms)
            )
        except (OSError, sqlite3.Error, StorageUnavailable) as e:
            logger.warning("WAL checkpoint failed: %s", e)
            busy = 1
        if busy:
            # A reader still uses the WAL: try again a little later, not after every batch.
            self._next_checkpoint = now + CHECKPOINT_RETRY_S
        else:
            self.checkpoints += 1

    def _report(self, error: BaseException) -> None:
        kind = _error_kind(error)
        if kind == "corrupt":
            logger.error("the database reports damage: %s", error)
        if kind in WRITE_TROUBLE and self.trouble is None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.trouble = f"failing since {since}: {error}"
        if kind is not None and self._observer is not None:
            self._observer.failed(kind)


def _probe(conn: sqlite3.Connection, pending: Pending) -> None:
    """A unit that writes nothing: its batch still takes the turn, the lock and commits."""


def _read_record(item_id: str, row: tuple[str, int, str] | None) -> Record | None:
    if row is None:
        return None
    return Record(item_id, msgspec.json.decode(row[0]), row[1], row[2])


def _encode_value(record: Record) -> str:
    return msgspec.json.encode(record.value).decode()


def _load_keys(conn: sqlite3.Connection, keys: list[str], now: float) -> dict[str, Stored]:
    marks = ",".join("?" * len(keys))
    rows = conn.execute(
        f"SELECT key, fingerprint, status, headers, body FROM idempotency"
        f" WHERE key IN ({marks}) AND expires_at > ?",
        (*keys, now),
    ).fetchall()
    return {
        key: Stored(fp, Rendered(status, msgspec.json.decode(headers), bytes(body)))
        for key, fp, status, headers, body in rows
    }


def _with_claims(
    conn: sqlite3.Connection,
    ops: list[Op],
    apply: Callable[[list[Op]], list[Any]],
    times: KeyTimes,
) -> list[Any]:
    """Apply ``ops``; ops whose Idempotency-Key is stored replay instead (see app.idempotency)."""
    keys = claimed_keys(ops)
    if not keys:
        return apply(ops)  # the usual path: no claim, no extra statement
    run, settled = triage(ops, _load_keys(conn, keys, times.now))
    outcomes = apply([ops[i] for i in run]) if run else []
    conn.executemany(
        # An expired row may still be there (not purged yet): the new request replaces it.
        "INSERT INTO idempotency (key, fingerprint, status, headers, body, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
        " fingerprint = excluded.fingerprint, status = excluded.status,"
        " headers = excluded.headers, body = excluded.body, expires_at = excluded.expires_at",
        [
            (
                row.key,
                row.fingerprint,
                row.response.status,
                msgspec.json.encode(dict(row.response.headers)).decode(),
                row.response.body,
                times.expires_at,
            )
            for row in to_store(ops, run, outcomes)
        ],
    )
    return merge(len(ops), run, outcomes, settled)


_UPSERT_COUNTER = (
    "INSERT INTO counters (name, value, version) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, version = excluded.version"
)
_UPSERT_ITEM = (
    "INSERT INTO items (id, value, version, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
    " version = excluded.version, updated_at = excluded.updated_at"
)


def _write_counter(
    conn: sqlite3.Connection, pending: Pending, name: str, ops: list[CounterOp]
) -> list[Any]:
    row = conn.execute("SELECT value, version FROM counters WHERE name = ?", (name,)).fetchone()
    current = None if row is None else Counter(name, row[0], row[1])
    final, outcomes = apply_counter_ops(name, current, ops, pending.commit)
    if final is None:
        if current is not None:
            conn.execute("DELETE FROM counters WHERE name = ?", (name,))
    elif final != current:
        conn.execute(_UPSERT_COUNTER, (name, final.value, final.version))
    pending.entries += counter_changes({name: current}, {name: final}, pending.commit)
    return list(outcomes)


def _write_item(
    conn: sqlite3.Connection, pending: Pending, item_id: str, ops: list[ItemOp]
) -> list[Any]:
    row = conn.execute(
        "SELECT value, version, updated_at FROM items WHERE id = ?", (item_id,)
    ).fetchone()
    current = _read_record(item_id, row)
    final, outcomes = apply_item_ops(item_id, current, ops, pending.commit)
    encoded: dict[str, str] = {}
    if final is None:
        if current is not None:
            conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
    elif final is not current:
        encoded[item_id] = _encode_value(final)
        conn.execute(_UPSERT_ITEM, (item_id, encoded[item_id], final.version, final.updated_at))
    pending.entries += item_changes({item_id: current}, {item_id: final}, encoded, pending.commit)
    return list(outcomes)


def _keys_json(writes: list[Any]) -> str:
    return msgspec.json.encode([w.key for w in writes]).decode()


class _CounterWrites(_Writes[CounterOp]):
    @classmethod
    def write_all(
        cls, conn: sqlite3.Connection, writes: list[_CounterWrites], pending: Pending
    ) -> list[list[CounterOutcome]]:
        before: dict[str, Counter | None] = {
            n: Counter(n, v, version)
            for n, v, version in conn.execute(
                "SELECT name, value, version FROM counters"
                " WHERE name IN (SELECT value FROM json_each(?))",
                (_keys_json(writes),),
            ).fetchall()
        }
        counters: dict[str, Counter | None] = dict(before)
        outcomes = []
        for w in writes:
            counters[w.key], done = apply_counter_ops(
                w.key, counters.get(w.key), w.ops, pending.commit
            )
            outcomes.append(list(done))
        changes = counter_changes(before, counters, pending.commit)
        upserts = [
            (c.key, counter.value, counter.version)
            for c in changes
            if (counter := counters[c.key]) is not None
        ]
        deletes = [(c.key,) for c in changes if c.value is None]
        if upserts:
            conn.executemany(_UPSERT_COUNTER, upserts)
        if deletes:
            conn.executemany("DELETE FROM counters WHERE name = ?", deletes)
        pending.entries += changes
        return outcomes


class _ItemWrites(_Writes[ItemOp]):
    @classmethod
    def write_all(
        cls, conn: sqlite3.Connection, writes: list[_ItemWrites], pending: Pending
    ) -> list[list[ItemOutcome]]:
        rows = conn.execute(
            "SELECT id, value, version, updated_at FROM items"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (_keys_json(writes),),
        ).fetchall()
        before: dict[str, Record | None] = {
            r[0]: Record(r[0], msgspec.json.decode(r[1]), r[2], r[3]) for r in rows
        }
        records: dict[str, Record | None] = dict(before)
        outcomes = []
        for w in writes:
            records[w.key], done = apply_item_ops(w.key, records.get(w.key), w.ops, pending.commit)
            outcomes.append(list(done))
        changed = {i: r for i, r in records.items() if r is not before.get(i)}
        encoded = {i: _encode_value(r) for i, r in changed.items() if r is not None}
        upserts = [
            (i, encoded[i], r.version, r.updated_at) for i, r in changed.items() if r is not None
        ]
        deletes = [(i,) for i, r in changed.items() if r is None and before.get(i) is not None]
        if upserts:
            conn.executemany(_UPSERT_ITEM, upserts)
        if deletes:
            conn.executemany("DELETE FROM items WHERE id = ?", deletes)
        pending.entries += item_changes(before, records, encoded, pending.commit)
        return outcomes


def _counter_unit(name: str, ops: list[CounterOp], times: KeyTimes) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> list[Any]:
        return _with_claims(
            conn, ops, lambda todo: _write_counter(conn, pending, name, todo), times
        )

    return unit


def _item_unit(item_id: str, ops: list[ItemOp], times: KeyTimes) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> list[Any]:
        return _with_claims(
            conn, ops, lambda todo: _write_item(conn, pending, item_id, todo), times
        )

    return unit


def _purge_changes_unit(cutoff: str, limit: int) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> int:
        return sqlite_changes.purge(conn, cutoff, limit)

    return unit


def _purge_unit(now: float, limit: int) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> int:
        cursor = conn.execute(
            "DELETE FROM idempotency WHERE key IN"
            " (SELECT key FROM idempotency WHERE expires_at <= ? LIMIT ?)",
            (now, limit),
        )
        return cursor.rowcount

    return unit


def _prepare(
    conn: sqlite3.Connection, busy_timeout_ms: int, synchronous: str, wal_limit: int = 0
) -> None:
    # busy_timeout first: every later statement may meet another worker's lock.
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # After a checkpoint resets the WAL, SQLite cuts the file back to this size.
    conn.execute(f"PRAGMA journal_size_limit = {int(wal_limit) if wal_limit else -1}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"SQLite refused WAL mode (journal_mode={mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    if level != {"NORMAL": 1, "FULL": 2}[synchronous]:
        raise RuntimeError(f"SQLite refused synchronous={synchronous} (got {level})")


def _start_up(
    conn: sqlite3.Connection,
    busy_timeout_ms: int,
    synchronous: str,
    turn_fd: int,
    wal_limit: int = 0,
) -> None:
    """Set pragmas and migrate while holding the writer turn.

    Workers starting together on a new file would otherwise race to switch it to WAL,
    which SQLite may refuse with "database is locked" without waiting out busy_timeout.
    """
    _no_wakeup_preemption()
    fcntl.flock(turn_fd, fcntl.LOCK_EX)
    try:
        _prepare(conn, busy_timeout_ms, synchronous, wal_limit)
        _migrate(conn)
    finally:
        fcntl.flock(turn_fd, fcntl.LOCK_UN)


def _no_wakeup_preemption() -> None:
    """Make the calling thread (the writer's) ``SCHED_BATCH`` on Linux; elsewhere do nothing.

    The writer thread wakes several times per commit: for the batch, after each GIL
    hand-off, after ``fdatasync``. An ordinary thread's wake-up may preempt the worker's
    event loop on the spot; under load the loop was preempted about once every four
    requests. A ``SCHED_BATCH`` thread keeps its fair share of the CPU but does not preempt
    on waking: it runs when the loop blocks or its time slice ends. Measured on
    ``GET /access`` at 64 connections: 2-4 µs less CPU per request (docs/design.md).
    """
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date under the write lock, so concurrent workers migrate once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise _NewerSchema(version)
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


class _NewerSchema(Exception):
    """The database was migrated by a newer lockstep; ``args[0]`` is its schema version."""


def _refusal(settings: Settings, e: BaseException) -> StartupError | None:
    """What to tell the operator when the database file itself is unusable, or None."""
    path = settings.sqlite_path.absolute()
    if isinstance(e, _NewerSchema):
        return StartupError(
            f"{path} has schema version {e.args[0]}, newer than this lockstep's"
            f" ({len(MIGRATIONS)}); run the lockstep that wrote it, or restore a backup"
        )
    code = getattr(e, "sqlite_errorcode", None) if isinstance(e, sqlite3.DatabaseError) else None
    code = None if code is None else code & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_NOTADB:
        elsewhere = (
            "set LOCKSTEP_DATABASE_URL to lockstep's database"
            if settings.database_url
            else "set LOCKSTEP_DATA_DIR to the directory of lockstep's database"
        )
        return StartupError(
            f"{path} is not a SQLite database; restore it from a backup"
            f" or move it away to start empty, or {elsewhere}"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return StartupError(
            f"{path} is damaged ({e}); restore it from a backup"
            f" (sqlite3 {path} .recover may save what is left)"
        )
    return None


class SQLiteStorage:
    """The embedded default backend."""

    def __init__(
        self,
        writer_db: aiosqlite.Connection,
        reader_db: aiosqlite.Connection,
        settings: Settings,
        turn_fd: int,
        db_file: DatabaseFile,
        observer: StorageObserver | None = None,
        clock: ServiceClock | None = None,
    ) -> None:
        self._clock = clock or ServiceClock()
        self._writer_db = writer_db
        self._reader_db = reader_db
        self._turn_fd = turn_fd
        self._db_file = db_file
        self._observer = observer
        self._poll_interval = settings.events_poll_interval
        self._key_ttl = settings.idempotency_ttl
        self._writer = _Writer(
            writer_db,
            settings.max_batch,
            turn_fd,
            db_file,
            f"{settings.sqlite_path}-wal",
            settings.wal_size_limit,
            settings.busy_timeout_ms,
            observer,
            settings.commit_gather,
        )
        self._reader = BatchedReader(partial(_in_db_thread, reader_db), settings.max_batch)

    @property
    def checkpoints(self) -> int:
        """How many TRUNCATE checkpoints this process's writer has completed."""
        return self._writer.checkpoints

    @property
    def batches(self) -> int:
        """How many write transactions this process has committed."""
        return self._writer.batches

    @classmethod
    async def open(
        cls,
        settings: Settings,
        observer: StorageObserver | None = None,
        clock: ServiceClock | None = None,
    ) -> SQLiteStorage:
        """Connect, set durability pragmas, migrate; refuse SQLite older than 3.35."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StartupError(
                f"lockstep needs SQLite >= 3.35 (RETURNING, UPSERT); this Python has"
                f" {sqlite3.sqlite_version}: run it with a Python built on a newer SQLite"
            )
        path: Path = settings.sqlite_path
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = connect_uri(path)  # refuses to create a database where one was served
        turn_fd = os.open(f"{path}.writer-turn", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            writer_db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except BaseException:
            os.close(turn_fd)
            raise
        try:
            await _in_db_thread(
                writer_db,
                _start_up,
                settings.busy_timeout_ms,
                settings.synchronous,
                turn_fd,
                settings.wal_size_limit,
            )
            write_marker(path)
            db_file = DatabaseFile(path)
            reader_db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except BaseException as e:
            await writer_db.close()
            os.close(turn_fd)
            refusal = _refusal(settings, e)
            if refusal is not None:
                raise refusal from e
            raise
        try:
            await reader_db.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout_ms)}")
            await reader_db.execute("PRAGMA query_only = 1")
        except BaseException:
            await reader_db.close()
            await writer_db.close()
            os.close(turn_fd)
            raise
        return cls(writer_db, reader_db, settings, turn_fd, db_file, observer, clock)

    async def _write(self, unit: Unit) -> Any:
        return await self._writer.submit(unit)

    # Plain methods: a combiner's open batch is queued as its own sink, and the writer
    # settles it (no future, callback or task per batch); a list gets the writer's future.
    @overload
    def apply_counter_ops(
        self, name: str, ops: list[CounterOp]
    ) -> asyncio.Future[list[CounterOutcome]]: ...

    @overload
    def apply_counter_ops(self, name: str, ops: OpenBatch[CounterOp]) -> None: ...

    def apply_counter_ops(
        self, name: str, ops: Batch[CounterOp]
    ) -> asyncio.Future[list[CounterOutcome]] | None:
        return self._queue(_Later(self._counter_unit, name, ops), ops)

    @overload
    def apply_item_ops(
        self, item_id: str, ops: list[ItemOp]
    ) -> asyncio.Future[list[ItemOutcome]]: ...

    @overload
    def apply_item_ops(self, item_id: str, ops: OpenBatch[ItemOp]) -> None: ...

    def apply_item_ops(
        self, item_id: str, ops: Batch[ItemOp]
    ) -> asyncio.Future[list[ItemOutcome]] | None:
        return self._queue(_Later(self._item_unit, item_id, ops), ops)

    def _queue(self, unit: _Later, ops: Batch[Any]) -> asyncio.Future[Any] | None:
        if isinstance(ops, OpenBatch):
            self._writer.put(unit, ops)
            return None
        return self._writer.submit(unit)

    def _counter_unit(self, name: str, batch: Batch[CounterOp]) -> Unit:
        ops = ops_of(batch)
        if claimed_keys(ops):
            return _counter_unit(name, ops, self._clock.key_times(self._key_ttl))
        return _CounterWrites(name, ops)

    def _item_unit(self, item_id: str, batch: Batch[ItemOp]) -> Unit:
        ops = ops_of(batch)
        if claimed_keys(ops):
            return _item_unit(item_id, ops, self._clock.key_times(self._key_ttl))
        return _ItemWrites(item_id, ops)

    async def purge_expired_keys(self, limit: int) -> int:
        deleted: int = await self._write(_purge_unit(self._clock.expiry_now(), limit))
        return deleted

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            # Reads waiting together share one thread hop (see app.storage.sqlite_reads).
            rows = await self._reader.fetch(sql, params)
        except (sqlite3.Error, ValueError) as e:
            # ValueError: aiosqlite's "no active connection" once the reader is closed.
            if self._observer is not None:
                self._observer.failed(_error_kind(e) or "other")
            raise StorageUnavailable(f"database: {e}") from e
        return list(rows)

    async def get_counter(self, name: str) -> Counter | None:
        rows = await self._read("SELECT value, version FROM counters WHERE name = ?", (name,))
        return Counter(name, rows[0][0], rows[0][1]) if rows else None

    async def list_counters(self, prefix: str, after: str, limit: int) -> list[Counter]:
        rows = await self._read(
            "SELECT name, value, version FROM counters WHERE name >= ? AND name < ?"
            " AND name > ? ORDER BY name LIMIT ?",
            (prefix, prefix + NAME_CEILING, after, limit),
        )
        return [Counter(r[0], r[1], r[2]) for r in rows]

    async def get_item(self, item_id: str) -> Record | None:
        rows = await self._read(
            "SELECT value, version, updated_at FROM items WHERE id = ?", (item_id,)
        )
        return _read_record(item_id, rows[0]) if rows else None

    async def list_items(self, prefix: str, after: str, limit: int) -> list[Record]:
        rows = await self._read(
            "SELECT id, value, version, updated_at FROM items WHERE id >= ? AND id < ?"
            " AND id > ? ORDER BY id LIMIT ?",
            (prefix, prefix + NAME_CEILING, after, limit),
        )
        return [Record(r[0], msgspec.json.decode(r[1]), r[2], r[3]) for r in rows]

    async def feed(self) -> tuple[int, int]:
        rows = await self._read("SELECT revision, purged_through FROM change_feed", ())
        return rows[0][0], rows[0][1]

    async def read_changes(
        self,
        since: int,
        limit: int,
        kind: str | None = None,
        prefix: str = "",
        resources: list[tuple[str, str]] | None = None,
        inline_max: int | None = None,
    ) -> FeedPage:
        query = sqlite_changes.changes_query(since, limit, kind, prefix, resources, inline_max)
        return sqlite_changes.to_page(await self._read(*query))

    async def item_versions(
        self, item_id: str, before: int, limit: int, version: int | None = None
    ) -> list[Change]:
        rows = await self._read(*sqlite_changes.versions_query(item_id, before, limit, version))
        return [Change(*row[:6]) for row in rows]

    async def deferred_value(self, change: Change, snapshot: bool = False) -> str | None:
        if snapshot:
            key, version, revision = change.key, change.version, change.revision
            params: tuple[Any, ...] = (key, version, revision, key, version, key, revision)
            rows = await self._read(sqlite_changes.SNAPSHOT_VALUE, params)
        else:
            params = (change.revision, change.kind, change.key)
            rows = await self._read(sqlite_changes.CHANGE_VALUE, params)
        return rows[0][0] if rows else None

    async def snapshot(
        self,
        kind: str | None = None,
        prefix: str = "",
        resources: list[tuple[str, str]] | None = None,
        inline_max: int | None = None,
    ) -> FeedPage:
        query = sqlite_changes.snapshot_query(kind, prefix, resources, inline_max)
        rows = await self._read(*query)
        return snapshot_page(rows, resources, now_iso())

    async def purge_changes(self, cutoff: str, limit: int) -> int:
        deleted: int = await self._write(_purge_changes_unit(cutoff, limit))
        return deleted

    async def wait_for_change(self, mark: int) -> int:
        # PRAGMA data_version on the reader changes whenever any connection other than the
        # reader commits (this worker's writer included); it reads the WAL index and touches
        # no table. Polled only while somebody waits here.
        while True:
            rows = await self._read("PRAGMA data_version", ())
            version: int = rows[0][0]
            if version != mark:
                return version
            await asyncio.sleep(self._poll_interval)

    async def ping(self) -> None:
        # Reads the schema from the file itself; "SELECT 1" would not touch the database.
        await self._read("SELECT count(*) FROM sqlite_schema", ())
        self._db_file.check()
        # The write path too: an empty transaction through the writer, or at once a 503
        # while an earlier write still waits for a turn that another worker keeps.
        stalled = self._writer.stalled
        if stalled is not None:
            raise StorageUnavailable(stalled)
        await self._writer.submit(_probe)

    def write_trouble(self) -> str | None:
        return self._writer.trouble

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            try:
                await self._reader.close()
            finally:
                await self._reader_db.close()
                await self._writer_db.close()
                os.close(self._turn_fd)
