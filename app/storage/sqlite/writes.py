"""What one resource's write does inside the SQLite write transaction.

A unit is either a plain function of the connection (a write with Idempotency-Keys, a
purge) or a ``Writes`` (one resource's ops with no key): all of a batch's ``Writes`` to
one table run together (``app.storage.sqlite.transaction``). Each adds the change-log
entries of what it changed (``app.storage.sqlite.changes``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from app.changes import counter_changes, item_changes
from app.clock import KeyTimes
from app.combining import Batch
from app.domain import (
    Counter,
    CounterOp,
    CounterOutcome,
    ItemOp,
    ItemOutcome,
    Record,
    apply_counter_ops,
    apply_item_ops,
)
from app.idempotency import (
    Claimable,
)
from app.storage.sqlite import changes as sqlite_changes
from app.storage.sqlite.changes import Pending
from app.storage.sqlite.idempotency import with_claims

Op = TypeVar("Op", bound=Claimable)
W = TypeVar("W", bound="Writes[Any]")


class Writes(Generic[Op]):
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
Unit = UnitFn | Writes[Any]


class Later:
    """A unit made only when its batch starts, so a combiner's batch stays open until then."""

    __slots__ = ("_batch", "_key", "_make")

    def __init__(self, make: Callable[[str, Any], Unit], key: str, batch: Batch[Any]) -> None:
        self._make = make
        self._key = key
        self._batch = batch

    def make(self) -> Unit:
        return self._make(self._key, self._batch)


def read_record(item_id: str, row: tuple[str, int, str] | None) -> Record | None:
    if row is None:
        return None
    return Record(item_id, msgspec.json.decode(row[0]), row[1], row[2])


def encode_value(record: Record) -> str:
    return msgspec.json.encode(record.value).decode()


UPSERT_COUNTER = (
    "INSERT INTO counters (name, value, version) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, version = excluded.version"
)
UPSERT_ITEM = (
    "INSERT INTO items (id, value, version, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
    " version = excluded.version, updated_at = excluded.updated_at"
)


def write_counter(
    conn: sqlite3.Connection, pending: Pending, name: str, ops: list[CounterOp]
) -> list[Any]:
    row = conn.execute("SELECT value, version FROM counters WHERE name = ?", (name,)).fetchone()
    current = None if row is None else Counter(name, row[0], row[1])
    final, outcomes = apply_counter_ops(name, current, ops, pending.commit)
    if final is None:
        if current is not None:
            conn.execute("DELETE FROM counters WHERE name = ?", (name,))
    elif final != current:
        conn.execute(UPSERT_COUNTER, (name, final.value, final.version))
    pending.entries += counter_changes({name: current}, {name: final}, pending.commit)
    return list(outcomes)


def write_item(
    conn: sqlite3.Connection, pending: Pending, item_id: str, ops: list[ItemOp]
) -> list[Any]:
    row = conn.execute(
        "SELECT value, version, updated_at FROM items WHERE id = ?", (item_id,)
    ).fetchone()
    current = read_record(item_id, row)
    final, outcomes = apply_item_ops(item_id, current, ops, pending.commit)
    encoded: dict[str, str] = {}
    if final is None:
        if current is not None:
            conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
    elif final is not current:
        encoded[item_id] = encode_value(final)
        conn.execute(UPSERT_ITEM, (item_id, encoded[item_id], final.version, final.updated_at))
    pending.entries += item_changes({item_id: current}, {item_id: final}, encoded, pending.commit)
    return list(outcomes)


def keys_json(writes: list[Any]) -> str:
    return msgspec.json.encode([w.key for w in writes]).decode()


class CounterWrites(Writes[CounterOp]):
    @classmethod
    def write_all(
        cls, conn: sqlite3.Connection, writes: list[CounterWrites], pending: Pending
    ) -> list[list[CounterOutcome]]:
        before: dict[str, Counter | None] = {
            n: Counter(n, v, version)
            for n, v, version in conn.execute(
                "SELECT name, value, version FROM counters"
                " WHERE name IN (SELECT value FROM json_each(?))",
                (keys_json(writes),),
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
            conn.executemany(UPSERT_COUNTER, upserts)
        if deletes:
            conn.executemany("DELETE FROM counters WHERE name = ?", deletes)
        pending.entries += changes
        return outcomes


class ItemWrites(Writes[ItemOp]):
    @classmethod
    def write_all(
        cls, conn: sqlite3.Connection, writes: list[ItemWrites], pending: Pending
    ) -> list[list[ItemOutcome]]:
        rows = conn.execute(
            "SELECT id, value, version, updated_at FROM items"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (keys_json(writes),),
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
        encoded = {i: encode_value(r) for i, r in changed.items() if r is not None}
        upserts = [
            (i, encoded[i], r.version, r.updated_at) for i, r in changed.items() if r is not None
        ]
        deletes = [(i,) for i, r in changed.items() if r is None and before.get(i) is not None]
        if upserts:
            conn.executemany(UPSERT_ITEM, upserts)
        if deletes:
            conn.executemany("DELETE FROM items WHERE id = ?", deletes)
        pending.entries += item_changes(before, records, encoded, pending.commit)
        return outcomes


def counter_unit(name: str, ops: list[CounterOp], times: KeyTimes) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> list[Any]:
        return with_claims(conn, ops, lambda todo: write_counter(conn, pending, name, todo), times)

    return unit


def item_unit(item_id: str, ops: list[ItemOp], times: KeyTimes) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> list[Any]:
        return with_claims(conn, ops, lambda todo: write_item(conn, pending, item_id, todo), times)

    return unit


def purge_changes_unit(cutoff: str, limit: int) -> Unit:
    def unit(conn: sqlite3.Connection, pending: Pending) -> int:
        return sqlite_changes.purge(conn, cutoff, limit)

    return unit
