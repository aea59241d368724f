"""The SQLite writer: the worker's one queue of write units, committed in batches.

It runs each batch through ``app.storage.sqlite.transaction`` in one hop into the writer
connection's thread (waiting for the workers' writer turn at most the busy timeout,
``app.storage.sqlite.turn``), reports commits and failures to the observer, and keeps
the WAL file bounded between batches.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from functools import partial

import aiosqlite

from app.errors import StorageUnavailable
from app.storage import StorageObserver
from app.storage.batching import BatchQueue, Outcome
from app.storage.sqlite.changes import Pending
from app.storage.sqlite.connection import error_kind, in_db_thread, translate
from app.storage.sqlite.file import DatabaseFile
from app.storage.sqlite.transaction import (
    checkpoint,
    run_batch,
)
from app.storage.sqlite.turn import TurnKeeper
from app.storage.sqlite.writes import Unit, Writes

logger = logging.getLogger(__name__)

# Failures that say the disk refuses writes, reported by /readyz until a write succeeds.
WRITE_TROUBLE = frozenset({"full", "io", "readonly"})
CHECKPOINT_RETRY_S = 0.5  # after a reader blocked a checkpoint, the next try waits this long


class Writer(BatchQueue[Unit]):
    """The worker's only writer: queues units and commits them in batches, in order.

    A resource's write takes its ops (a combiner's batch closes) only when the batch
    starts, after the queue has gathered.

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

    async def _run_batch(self, items: list[Unit]) -> list[Outcome]:
        started = time.perf_counter()
        try:
            # A combiner's batch is taken here, after the queue gathered (app.combining).
            for unit in items:
                if isinstance(unit, Writes):
                    unit.take()
            results = await self._turns.run(
                partial(in_db_thread, self._db, run_batch, items, self._turn_fd, self._db_file)
            )
        except Exception as e:
            self._report(e)
            error = translate(e)
            if not isinstance(error, StorageUnavailable):
                logger.exception("write batch failed")
            return [(False, error)] * len(items)
        self.batches += 1
        writes = sum(item is not probe for item in items)  # /readyz's probe is no request
        if self._observer is not None and writes:
            self._observer.committed(time.perf_counter() - started, writes)
        outcomes: list[Outcome] = []
        for item, (ok, value) in zip(items, results, strict=True):
            if not ok:
                self._report(value)
                value = translate(value)
            elif item is not probe:  # a write that went through: the trouble is over
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
                partial(in_db_thread, self._db, checkpoint, self._turn_fd, self._busy_timeout_ms)
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
        kind = error_kind(error)
        if kind == "corrupt":
            logger.error("the database reports damage: %s", error)
        if kind in WRITE_TROUBLE and self.trouble is None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.trouble = f"failing since {since}: {error}"
        if kind is not None and self._observer is not None:
            self._observer.failed(kind)


def probe(conn: sqlite3.Connection, pending: Pending) -> None:
    """A unit that writes nothing: its batch still takes the turn, the lock and commits."""
