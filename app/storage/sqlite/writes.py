"""Each resource's write inside the SQLite write transaction, with or without Idempotency-Keys.

A batch's writes to one table run together, under one savepoint (``write_all``): one
SELECT reads every resource they touch, one more reads the Idempotency-Keys they claim
(only if any: ``app.storage.sqlite.idempotency.Claims``), the ops are applied in memory
(``app.domain``), and one ``executemany`` per statement writes back the results, their
change-log entries are added to the transaction's (``app.storage.sqlite.changes``), and the
keys' responses are stored. An op's own failure (an overflow, a failed precondition, a
reused key) is an outcome; a unit whose computation raises fails alone and writes nothing.
What can still fail is the write itself, for reasons (disk full, I/O) no single request
causes; then the whole group fails together, and units outside it are unaffected.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from app.changes import counter_changes, record_changes
from app.clock import KeyTimes
from app.combining import Batch, ops_of
from app.domain import (
    Commit,
    Counter,
    CounterOp,
    Record,
    RecordOp,
    apply_counter_ops,
    apply_record_ops,
)
from app.idempotency import Claimable, claimed_keys
from app.storage.sqlite import changes as sqlite_changes
from app.storage.sqlite.changes import Pending
from app.storage.sqlite.idempotency import claims_of

Op = TypeVar("Op", bound=Claimable)
State = TypeVar("State")


class Writes(Generic[Op, State]):
    """One resource's ops in a write batch; a subclass per table reads, applies and writes."""

    __slots__ = ("batch", "key", "key_times", "ops", "times")

    # Reads the rows of a JSON array of keys.
    SELECT: ClassVar[str]

    def __init__(self, key: str, batch: Batch[Op], key_times: Callable[[], KeyTimes]) -> None:
        self.key = key
        self.batch = batch
        self.key_times = key_times  # the service clock's times for Idempotency-Keys
        self.ops: list[Op] = []
        self.times: KeyTimes | None = None

    def take(self) -> None:
        """Take the ops (closing a combiner's open batch), on the event loop as the batch starts.

        Ops that claim an Idempotency-Key read the service clock here, not on the writer
        thread (``app.clock``).
        """
        self.ops = ops_of(self.batch)
        if claimed_keys(self.ops):
            self.times = self.key_times()

    @staticmethod
    def decode(row: Any) -> State:
        raise NotImplementedError

    @staticmethod
    def apply(
        key: str, state: State | None, ops: list[Op], commit: Commit
    ) -> tuple[State | None, list[Any]]:
        raise NotImplementedError

    @staticmethod
    def write_back(
        conn: sqlite3.Connection,
        before: dict[str, State],
        after: dict[str, State | None],
        pending: Pending,
    ) -> None:
        """Write the resources that changed, and add their change-log entries to ``pending``."""
        raise NotImplementedError

    @classmethod
    def write_all(
        cls, conn: sqlite3.Connection, writes: Sequence[Writes[Op, State]], pending: Pending
    ) -> list[tuple[bool, Any]]:
        """Each unit's ``(ok, outcomes or error)``, in order, with every change written."""
        keys = msgspec.json.encode([w.key for w in writes]).decode()
        before: dict[str, State] = {
            row[0]: cls.decode(row) for row in conn.execute(cls.SELECT, (keys,)).fetchall()
        }
        after: dict[str, State | None] = dict(before)
        claims = claims_of(conn, [(w.ops, w.times) for w in writes])
        commit, apply = pending.commit, cls.apply
        results: list[tuple[bool, Any]] = []
        for w in writes:
            key = w.key
            state = after.get(key)
            try:
                after[key], outcomes = claims.run(w.ops, partial(apply, key, state, commit=commit))
            except Exception as e:
                results.append((False, e))
                continue
            results.append((True, outcomes))
        cls.write_back(conn, before, after, pending)
        claims.store(conn)
        return results


UPSERT_COUNTER = (
    "INSERT INTO counters (name, value, version) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, version = excluded.version"
)
UPSERT_ITEM = (
    "INSERT INTO items (id, value, version, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
    " version = excluded.version, updated_at = excluded.updated_at"
)


class CounterWrites(Writes[CounterOp, Counter]):
    __slots__ = ()

    SELECT = (
        "SELECT name, value, version FROM counters WHERE name IN (SELECT value FROM json_each(?))"
    )

    @staticmethod
    def decode(row: Any) -> Counter:
        return Counter(row[0], row[1], row[2])

    @staticmethod
    def apply(
        key: str, state: Counter | None, ops: list[CounterOp], commit: Commit
    ) -> tuple[Counter | None, list[Any]]:
        return apply_counter_ops(key, state, ops, commit)

    @staticmethod
    def write_back(
        conn: sqlite3.Connection,
        before: dict[str, Counter],
        after: dict[str, Counter | None],
        pending: Pending,
    ) -> None:
        changes = counter_changes(before, after, pending.commit)
        upserts = [
            (c.key, counter.value, counter.version)
            for c in changes
            if (counter := after[c.key]) is not None
        ]
        deletes = [(c.key,) for c in changes if c.value is None]
        if upserts:
            conn.executemany(UPSERT_COUNTER, upserts)
        if deletes:
            conn.executemany("DELETE FROM counters WHERE name = ?", deletes)
        pending.entries += changes


def decode_record(row: Any) -> Record:
    """A record from its row: ``(id, value, version, updated_at)``."""
    return Record(row[0], msgspec.json.decode(row[1]), row[2], row[3])


class RecordWrites(Writes[RecordOp, Record]):
    __slots__ = ()

    SELECT = (
        "SELECT id, value, version, updated_at FROM items"
        " WHERE id IN (SELECT value FROM json_each(?))"
    )
    decode = staticmethod(decode_record)

    @staticmethod
    def apply(
        key: str, state: Record | None, ops: list[RecordOp], commit: Commit
    ) -> tuple[Record | None, list[Any]]:
        return apply_record_ops(key, state, ops, commit)

    @staticmethod
    def write_back(
        conn: sqlite3.Connection,
        before: dict[str, Record],
        after: dict[str, Record | None],
        pending: Pending,
    ) -> None:
        changed = {i: r for i, r in after.items() if r is not before.get(i)}
        encoded = {i: msgspec.json.encode(r.value).decode() for i, r in changed.items() if r}
        upserts = [
            (i, encoded[i], r.version, r.updated_at) for i, r in changed.items() if r is not None
        ]
        deletes = [(i,) for i, r in changed.items() if r is None]
        if upserts:
            conn.executemany(UPSERT_ITEM, upserts)
        if deletes:
            conn.executemany("DELETE FROM items WHERE id = ?", deletes)
        pending.entries += record_changes(before, after, encoded, pending.commit)


# A unit of a write batch: a resource's write, or a function run inside the batch's
# transaction on the writer thread under a savepoint of its own (a transaction, a purge),
# adding the change-log entries of what it changed to ``pending``.
UnitFn = Callable[[sqlite3.Connection, Pending], Any]
Unit = Writes[Any, Any] | UnitFn


def purge_changes_unit(cutoff: str, limit: int) -> UnitFn:
    def unit(conn: sqlite3.Connection, pending: Pending) -> int:
        return sqlite_changes.purge(conn, cutoff, limit)

    return unit
