"""A ``POST /txn`` transaction as one unit of the SQLite writer's write transaction.

The unit runs inside the writer's ``BEGIN IMMEDIATE`` under a savepoint of its own: it
reads every counter and record the transaction names, evaluates it (``app.txn``), and
writes back, with one change-log entry per resource changed, only when no operation
failed, so the changes commit together with the batch, under its revision, or not at all.
The registry locks the transaction holds keep the combiners' batches for its resources
out of that commit, so no resource gets two entries in one revision. With an
Idempotency-Key, the key is looked up first (a stored one replays) and the rendered
answer, a 409 included, is stored in the same transaction. Fences (``Lockstep-Fence``) are
checked first, on the locks' rows as this transaction reads them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec

from app.changes import counter_changes, record_changes
from app.clock import KeyTimes
from app.domain import Counter, Record
from app.errors import LockstepError
from app.leases import fence_stale
from app.storage.sqlite.changes import Pending
from app.storage.sqlite.idempotency import claims_of
from app.storage.sqlite.leases import stale_fence
from app.storage.sqlite.writes import UnitFn
from app.txn import Evaluated, Txn, evaluate

_SELECT_COUNTERS = (
    "SELECT name, value, version FROM counters WHERE name IN (SELECT value FROM json_each(?))"
)
_SELECT_ITEMS = (
    "SELECT id, value, version, updated_at FROM items WHERE id IN (SELECT value FROM json_each(?))"
)
_UPSERT_COUNTER = (
    "INSERT INTO counters (name, value, version) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, version = excluded.version"
)
_UPSERT_ITEM = (
    "INSERT INTO items (id, value, version, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
    " version = excluded.version, updated_at = excluded.updated_at"
)


def _json(names: list[str]) -> str:
    return msgspec.json.encode(names).decode()


def apply_txn(
    conn: sqlite3.Connection, pending: Pending, txn: Txn, now: Callable[[], float]
) -> Evaluated | LockstepError:
    """Evaluate ``txn`` on the states read here and write its changes and their change-log
    entries; returns the outcome, or the error that stopped it (then nothing was written).

    ``now`` is the service clock, read here for the fences' leases."""
    if txn.fences:
        stale = stale_fence(conn, txn.fences, now())
        if stale is not None:
            return fence_stale(stale)
    names, ids = txn.names("counter"), txn.names("item")
    commit = pending.commit
    counters: dict[str, Counter | None] = dict.fromkeys(names)
    for name, value, version in conn.execute(_SELECT_COUNTERS, (_json(names),)):
        counters[name] = Counter(name, value, version)
    items: dict[str, Record | None] = dict.fromkeys(ids)
    for i, value, version, updated_at in conn.execute(_SELECT_ITEMS, (_json(ids),)):
        items[i] = Record(i, msgspec.json.decode(value), version, updated_at)
    try:
        done = evaluate(txn, counters, items, commit)
    except LockstepError as e:
        return e
    changed = {i: r for i, r in done.items.items() if r is not items[i]}
    encoded = {i: msgspec.json.encode(r.value).decode() for i, r in changed.items() if r}
    changes = counter_changes(counters, done.counters, commit)
    changes += record_changes(items, done.items, encoded, commit)
    upserts = [(c.name, c.value, c.version) for c in done.counters.values() if c is not None]
    upserts = [u for u in upserts if counters[u[0]] != Counter(*u)]
    if upserts:
        conn.executemany(_UPSERT_COUNTER, upserts)
    gone = [(n,) for n, c in done.counters.items() if c is None and counters[n] is not None]
    if gone:
        conn.executemany("DELETE FROM counters WHERE name = ?", gone)
    records = [(i, encoded[i], r.version, r.updated_at) for i, r in changed.items() if r]
    if records:
        conn.executemany(_UPSERT_ITEM, records)
    gone = [(i,) for i, r in changed.items() if r is None]
    if gone:
        conn.executemany("DELETE FROM items WHERE id = ?", gone)
    pending.entries += changes
    done.changed = bool(changes)
    done.revision = commit.revision if changes else commit.revision - 1
    return done


def txn_unit(txn: Txn, times: KeyTimes | None, now: Callable[[], float]) -> UnitFn:
    """The writer's unit for ``txn``; ``times`` (the service clock's) when it claims a key."""

    def unit(conn: sqlite3.Connection, pending: Pending) -> Any:
        def apply(todo: list[Txn]) -> tuple[None, list[Any]]:
            return None, [apply_txn(conn, pending, t, now) for t in todo]

        # A stored key replays instead (app.idempotency); a 409 is stored as any answer.
        claims = claims_of(conn, [([txn], times)])
        _, (outcome,) = claims.run([txn], apply)
        claims.store(conn)
        return outcome

    return unit
