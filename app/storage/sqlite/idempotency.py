"""Idempotency-Key rows in SQLite: looked up, stored and purged inside the write transaction.

The rules (which ops replay, which apply, what is stored) live in ``app.idempotency`` and
are the same for every backend; here are the table's statements, and ``Claims``, which
every write of a batch goes through: it looks up the keys of a whole group at once, and
its rows are stored with the group's changes, in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from app.clock import KeyTimes
from app.idempotency import (
    Claimable,
    NewKey,
    Rendered,
    Stored,
    claimed_keys,
    merge,
    to_store,
    triage,
)
from app.storage.sqlite.changes import Pending

Op = TypeVar("Op", bound=Claimable)
T = TypeVar("T")

STORE = (
    # An expired row may still be there (not purged yet): the new request replaces it.
    "INSERT INTO idempotency (key, fingerprint, status, headers, body, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
    " fingerprint = excluded.fingerprint, status = excluded.status,"
    " headers = excluded.headers, body = excluded.body, expires_at = excluded.expires_at"
)


def load_keys(conn: sqlite3.Connection, keys: Sequence[str], now: float) -> dict[str, Stored]:
    """The stored rows of ``keys`` that have not expired by ``now``."""
    rows = conn.execute(
        "SELECT key, fingerprint, status, headers, body FROM idempotency"
        " WHERE key IN (SELECT value FROM json_each(?)) AND expires_at > ?",
        (msgspec.json.encode(keys).decode(), now),
    ).fetchall()
    return {
        key: Stored(fp, Rendered(status, msgspec.json.decode(headers), bytes(body)))
        for key, fp, status, headers, body in rows
    }


def store_keys(conn: sqlite3.Connection, rows: Sequence[NewKey], expires_at: float) -> None:
    """Insert the rendered responses of applied claimed ops."""
    conn.executemany(
        STORE,
        [
            (
                row.key,
                row.fingerprint,
                row.response.status,
                msgspec.json.encode(dict(row.response.headers)).decode(),
                row.response.body,
                expires_at,
            )
            for row in rows
        ],
    )


class Claims:
    """The Idempotency-Keys claimed by the writes of one group, looked up at once.

    ``run`` applies a unit's ops; ops whose key is stored replay instead (``app.idempotency``),
    and the applied ones' responses become rows for ``store``, written before the group's
    savepoint is released. With no key claimed (the usual write) nothing is read or stored.
    """

    __slots__ = ("_expires_at", "_fresh", "_stored")

    def __init__(self, conn: sqlite3.Connection, keys: list[str], times: list[KeyTimes]) -> None:
        # Of the units' clock readings, keys are judged by the earliest and stamped by the
        # latest: none expires before its time (app.clock).
        self._stored = load_keys(conn, keys, min(t.now for t in times)) if keys else None
        self._expires_at = max((t.expires_at for t in times), default=0.0)
        self._fresh: list[NewKey] = []

    def run(
        self, ops: list[Op], apply: Callable[[list[Op]], tuple[T, list[Any]]]
    ) -> tuple[T, list[Any]]:
        """``apply(ops)``: the state it leaves and an outcome per op, with the ops whose key
        is stored settled instead of applied."""
        stored = self._stored
        if stored is None:
            return apply(ops)
        run, settled = triage(ops, stored)
        state, outcomes = apply([ops[i] for i in run])
        fresh = to_store(ops, run, outcomes)
        # Later units of this group see these keys as stored, as they will be at COMMIT.
        stored.update((row.key, Stored(row.fingerprint, row.response)) for row in fresh)
        self._fresh += fresh
        return state, merge(len(ops), run, outcomes, settled)

    def store(self, conn: sqlite3.Connection) -> None:
        """Insert the rows of every key applied, in the transaction of the changes."""
        if self._fresh:
            store_keys(conn, self._fresh, self._expires_at)


def claims_of(
    conn: sqlite3.Connection, units: Sequence[tuple[list[Any], KeyTimes | None]]
) -> Claims:
    """The ``Claims`` of units given as ``(ops, times)``, ``times`` set where keys are claimed."""
    keys = [k for ops, times in units if times is not None for k in claimed_keys(ops)]
    return Claims(conn, keys, [t for _, t in units if t is not None])


def purge_unit(now: float, limit: int) -> Callable[[sqlite3.Connection, Pending], int]:
    def unit(conn: sqlite3.Connection, pending: Pending) -> int:
        cursor = conn.execute(
            "DELETE FROM idempotency WHERE key IN"
            " (SELECT key FROM idempotency WHERE expires_at <= ? LIMIT ?)",
            (now, limit),
        )
        return cursor.rowcount

    return unit
