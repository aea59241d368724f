"""Copies of a SQLite database while the service serves it: online backup, export, import.

Each reads through its own connection, never the service's, and none needs the service
stopped. A backup and an export each read inside one read transaction, so they see one
committed state however many writes land meanwhile (WAL lets writers go on); an import
checks that the database is empty and writes everything in one write transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

from app.export_format import (
    TABLES,
    Row,
    TargetNotEmpty,
    counter_line,
    end_line,
    header_line,
    in_batches,
    lock_line,
    record_line,
)


class CopyError(Exception):
    """The copy cannot be made; the message names the cause and what to do."""


def _open_existing(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection that only reads, to an existing lockstep database.

    Not ``mode=ro``: a read-only connection to a stopped service's database leaves the
    ``-wal`` and ``-shm`` files it created behind, owned by whoever ran the command (root,
    say), where the service may then be unable to write them. The last connection to
    close removes them, as the service's own connections do.
    """
    if not path.is_file():
        raise CopyError(f"no database at {path}: set LOCKSTEP_DATA_DIR or LOCKSTEP_DATABASE_URL")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA query_only = 1")
    return conn


def backup(source: Path, dest: Path, busy_timeout_ms: int) -> int:
    """Copy the database at ``source`` to the new file ``dest``; returns its size in pages.

    SQLite's online backup API, in one step: the copy is the database as of one read
    transaction. It is written beside ``dest``, checked, flushed to disk and renamed into
    place, so ``dest`` never holds a partial copy.
    """
    if dest.exists():
        raise CopyError(f"{dest} exists already: give a new file name")
    partial = dest.with_name(f".{dest.name}.partial")
    with closing(_open_existing(source, busy_timeout_ms)) as src:
        try:
            with closing(sqlite3.connect(partial, isolation_level=None)) as dst:
                src.backup(dst)
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
                pages: int = dst.execute("PRAGMA page_count").fetchone()[0]
            if check != "ok":
                raise CopyError(f"the copy failed its check ({check}); nothing was written")
            _fsync(partial)
            os.replace(partial, dest)
            _fsync(dest.parent)
        except sqlite3.Error as e:
            raise CopyError(f"cannot write {dest}: {e}") from e
        finally:
            partial.unlink(missing_ok=True)
    return pages


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_lines(path: Path, busy_timeout_ms: int) -> Iterator[bytes]:
    """The database as export lines (``app.export_format``), streamed.

    Every query runs in one read transaction: one committed state, however long it takes.
    """
    with closing(_open_existing(path, busy_timeout_ms)) as conn:
        try:
            conn.execute("BEGIN")
            yield header_line()
            counters = records = 0
            for name, value, counter_version in conn.execute(
                "SELECT name, value, version FROM counters ORDER BY name"
            ):
                counters += 1
                yield counter_line(name, value, counter_version)
            for row in conn.execute("SELECT id, value, version, updated_at FROM items ORDER BY id"):
                records += 1
                yield record_line(*row)
            locks = 0
            for name, last_token in conn.execute(
                "SELECT name, last_token FROM locks ORDER BY name"
            ):
                locks += 1
                yield lock_line(name, last_token)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise CopyError(f"cannot read {path}: {e}") from e
    yield end_line(counters, records, locks)


def import_rows(path: Path, busy_timeout_ms: int, rows: Iterable[Row]) -> tuple[int, int, int]:
    """Load ``rows`` into the empty database at ``path`` in one transaction.

    The schema must exist already (``app.storage.open_storage`` creates it). Returns how
    many counters, records and locks were written; raises ``TargetNotEmpty`` and writes
    nothing if the database is not empty. An exception from ``rows`` rolls everything back.
    """
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            held = [
                table
                for table in TABLES
                if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]
            ]
            if held:
                raise TargetNotEmpty(held)
            done = _insert_all(conn, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return done


def _insert_all(conn: sqlite3.Connection, rows: Iterable[Row]) -> tuple[int, int, int]:
    total_counters = total_records = total_locks = 0
    for batch in in_batches(rows):
        conn.executemany(
            "INSERT INTO counters (name, value, version) VALUES (?, ?, ?)", batch.counters
        )
        conn.executemany(
            "INSERT INTO items (id, value, version, updated_at) VALUES (?, ?, ?, ?)", batch.records
        )
        conn.executemany("INSERT INTO locks (name, last_token) VALUES (?, ?)", batch.locks)
        total_counters += len(batch.counters)
        total_records += len(batch.records)
        total_locks += len(batch.locks)
    return total_counters, total_records, total_locks
