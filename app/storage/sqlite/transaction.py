"""The write transaction: one batch of units, taken in turns by the workers, with savepoints.

``run_batch`` runs on the writer connection's thread: it takes the workers' writer turn,
then runs every unit of the batch in one ``BEGIN IMMEDIATE ... COMMIT``, each unit (or a
table's group of writes) under a savepoint of its own so one failure never fails the batch.
``checkpoint`` bounds the WAL between batches, also in the writer turn.
"""

from __future__ import annotations

import logging
import sqlite3
from functools import partial
from typing import Any

from app.storage.sqlite.changes import Pending
from app.storage.sqlite.file import DatabaseFile
from app.storage.sqlite.turn import TurnClaim, turn
from app.storage.sqlite.writes import (
    Unit,
    UnitFn,
    Writes,
)

logger = logging.getLogger(__name__)

CHECKPOINT_WAIT_MS = 50  # longest a checkpoint waits for readers before giving up this time


def run_batch(
    conn: sqlite3.Connection,
    units: list[Unit],
    turn_fd: int,
    db_file: DatabaseFile,
    claim: TurnClaim,
) -> list[tuple[bool, Any]]:
    """Run ``units`` in one write transaction; a failing unit rolls back to its savepoint.

    Before and after, the database path must still name the file this worker writes to
    (``app.storage.sqlite.file``): a commit into a deleted file is not acknowledged.

    Workers take turns through an exclusive ``flock`` on a lock file beside the database
    before ``BEGIN IMMEDIATE``. SQLite's write lock alone is what makes this correct, but
    a writer that finds it taken sleeps in SQLite's busy handler for 1, 2, 5 … 100 ms,
    while a writer blocked in ``flock`` is woken by the kernel the moment the other
    worker commits. The kernel drops the lock if its holder dies.
    """
    db_file.check()
    with turn(turn_fd, claim):  # the loop waits for it at most the busy timeout
        results = run_transaction(conn, units)
    db_file.check()
    return results


def run_transaction(conn: sqlite3.Connection, units: list[Unit]) -> list[tuple[bool, Any]]:
    """Each unit's ``(ok, result or error)``, in order, once they have all committed.

    The resources' writes (``Writes``) to one table run as one step; anything else is a
    step alone. Each step has a savepoint of its own, unless it is the transaction's only
    one: then its failure rolls back the whole transaction, to the same effect.
    """
    steps: list[tuple[list[int], UnitFn]] = []
    groups: dict[type[Writes[Any, Any]], tuple[list[int], list[Writes[Any, Any]]]] = {}
    for i, unit in enumerate(units):
        if isinstance(unit, Writes):
            group = groups.get(type(unit))
            if group is None:
                group = groups[type(unit)] = ([], [])
                steps.append((group[0], partial(write_group, type(unit), group[1])))
            group[0].append(i)
            group[1].append(unit)
        else:
            steps.append(([i], partial(alone, unit)))
    results: list[tuple[bool, Any]] = [(False, None)] * len(units)
    conn.execute("BEGIN IMMEDIATE")
    try:
        pending = Pending.open(conn)
        if len(steps) == 1:
            indexes, step = steps[0]
            try:
                done = step(conn, pending)
            except Exception as e:
                if conn.in_transaction:  # SQLite may have rolled back by itself (disk full)
                    conn.execute("ROLLBACK")
                return [(False, e)] * len(units)
            for i, outcome in zip(indexes, done, strict=True):
                results[i] = outcome
        else:
            for indexes, step in steps:
                ok, value = in_savepoint(conn, pending, step)
                for n, i in enumerate(indexes):
                    results[i] = value[n] if ok else (False, value)
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


def write_group(
    kind: type[Writes[Any, Any]],
    writes: list[Writes[Any, Any]],
    conn: sqlite3.Connection,
    pending: Pending,
) -> list[tuple[bool, Any]]:
    return kind.write_all(conn, writes, pending)


def alone(unit: UnitFn, conn: sqlite3.Connection, pending: Pending) -> list[tuple[bool, Any]]:
    return [(True, unit(conn, pending))]


def in_savepoint(conn: sqlite3.Connection, pending: Pending, unit: UnitFn) -> Any:
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


def checkpoint(
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
