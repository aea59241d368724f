"""The PostgreSQL writer: each worker's units, committed many resources per transaction.

It queues units, takes a combiner's open batch when a transaction slot is free and the
event loop has run a few more turns (``Gatherer``, as SQLite's writer does), runs the
batch (``app.storage.postgres.transaction``, or the increment fast path), retries
deadlocks, never retries a COMMIT whose fate is unknown, and answers every unit exactly
once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import asyncpg

from app.clock import ServiceClock
from app.combining import Batch, ops_of
from app.domain import Commit, Counter, apply_counter_ops, now_iso
from app.errors import StorageUnavailable
from app.idempotency import claimed_keys
from app.settings import Settings
from app.storage import StorageObserver
from app.storage.batching import Gatherer
from app.storage.postgres.increments import Plan, increment_existing, plan
from app.storage.postgres.pool import (
    UNAVAILABLE,
    connection,
    error_kind,
    translate,
)
from app.storage.postgres.transaction import RETRIES, CommitUnknown, Unit, commit_batch

logger = logging.getLogger(__name__)


def _fail(units: list[Unit], e: BaseException, observer: StorageObserver | None) -> None:
    """Give every unsettled unit the failure ``e`` (cancelled units are cancelled)."""
    kind = error_kind(e.__cause__ if isinstance(e, CommitUnknown) and e.__cause__ else e)
    if kind is not None and observer is not None:
        observer.failed(kind)
    if isinstance(e, asyncio.CancelledError):
        for unit in units:
            unit.future.cancel()
        return
    error = translate(e)
    if not isinstance(error, StorageUnavailable):
        logger.error("write batch failed", exc_info=e)
    for unit in units:
        if not unit.future.done():
            unit.future.set_exception(error)


class Writer:
    """Queues this worker's units and commits them in batches, ``writers`` transactions at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        observer: StorageObserver | None,
        clock: ServiceClock,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._observer = observer
        self._key_ttl = settings.idempotency_ttl
        max_batch, writers = settings.max_batch, settings.pg_writers
        timeout = settings.pg_command_timeout
        self._timeout = timeout
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(writers)
        self._gatherer = Gatherer(settings.commit_gather)
        self._queue: deque[Unit] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._inflight: set[asyncio.Task[None]] = set()
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="lockstep-postgres-writer")
        self.batches = 0  # committed transactions, for tests and metrics

    def submit(self, kind: str, key: str, ops: Batch[Any]) -> asyncio.Future[Any]:
        """Queue a unit; the future resolves after its batch has committed."""
        if self._closing:
            raise StorageUnavailable("shutting down")
        unit = Unit(kind, key, ops, self._loop.create_future())
        self._queue.append(unit)
        self._wakeup.set()
        return unit.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            # Whatever queued while we waited for a slot, or arrives over the next few busy
            # loop turns, joins this batch: without those turns, a resource's next batch
            # would be taken the moment its previous one settled, before the requests just
            # answered could send their next ones (docs/design.md has the figures).
            if self._gatherer.turns:
                await self._gatherer.gather()
            size = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
            for unit in batch:  # a combiner's batch is open until now
                unit.ops = ops_of(unit.batch)
            task = asyncio.create_task(self._commit(batch))
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _commit(self, batch: list[Unit]) -> None:
        try:
            await self._commit_all(batch)
        finally:
            # Whatever went wrong, no request may wait forever for its outcome.
            for unit in batch:
                if not unit.future.done():
                    unit.future.set_exception(RuntimeError("write batch ended without an outcome"))

    async def _commit_all(self, batch: list[Unit]) -> None:
        batch = await self._increment_fast(batch)
        if not batch:
            return
        started = time.perf_counter()
        try:
            results = await self._commit_with_retries(batch)
        except BaseException as e:
            _fail(batch, e, self._observer)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self._committed(started, len(batch))
        for unit, (ok, value) in zip(batch, results, strict=True):
            if unit.future.done():
                continue
            if ok:
                unit.future.set_result(value)
            else:
                unit.future.set_exception(value)

    def _committed(self, started: float, units: int) -> None:
        self.batches += 1
        if self._observer is not None:
            self._observer.committed(time.perf_counter() - started, units)

    async def _increment_fast(self, batch: list[Unit]) -> list[Unit]:
        """Settle the units the increment fast path can take; returns the rest."""
        seen: dict[str, int] = {}
        for u in batch:
            seen[f"{u.kind}:{u.key}"] = seen.get(f"{u.kind}:{u.key}", 0) + 1
        plans: dict[str, tuple[Unit, Plan]] = {}
        for u in batch:
            # A key queued twice in one batch must see its own first write: general path.
            # Claimed ops need their key looked up in a transaction: general path too.
            if u.kind == "counter" and seen[f"counter:{u.key}"] == 1 and not claimed_keys(u.ops):
                p = plan(u.ops)
                if p is not None:
                    plans[u.key] = (u, p)
        if not plans:
            return batch
        started = time.perf_counter()
        stamp = now_iso()
        try:
            new_values = await self._run_fast({k: p for k, (_, p) in plans.items()}, stamp)
        except BaseException as e:
            _fail([unit for unit, _ in plans.values()], e, self._observer)
            if isinstance(e, asyncio.CancelledError):
                raise
            return [u for u in batch if u.key not in plans or u.kind != "counter"]
        self._committed(started, len(plans))
        for key, (stored, revision) in new_values.items():
            unit, p = plans[key]
            before = Counter(key, stored.value - p.delta, stored.version - p.count)
            final, outcomes = apply_counter_ops(
                key, before, list(unit.ops), Commit(revision, stamp)
            )
            if unit.future.done():
                continue
            if final != stored:  # cannot happen while the WHERE clause guards the range
                logger.error("increment of %r stored %s, expected %s", key, stored, final)
                unit.future.set_exception(RuntimeError("increment outcome mismatch"))
            else:
                unit.future.set_result(outcomes)
        return [u for u in batch if not (u.kind == "counter" and u.key in new_values)]

    async def _run_fast(self, plans: dict[str, Plan], stamp: str) -> dict[str, tuple[Counter, int]]:
        for attempt in range(1, RETRIES + 1):
            async with connection(self._pool, self._timeout) as conn:
                try:
                    return await increment_existing(conn, plans, stamp)
                except asyncpg.TransactionRollbackError as e:
                    # The server aborted the statement: nothing was applied.
                    if attempt == RETRIES:
                        raise
                    logger.info("increments retried after %s (attempt %d)", e.sqlstate, attempt)
                except UNAVAILABLE as e:
                    # The statement commits by itself: once sent, its fate is unknown.
                    raise CommitUnknown(
                        f"database connection lost during an increment ({type(e).__name__});"
                        " it may or may not have been applied"
                    ) from e
        raise AssertionError("unreachable")

    async def _commit_with_retries(self, batch: list[Unit]) -> list[tuple[bool, Any]]:
        reconnected = False
        for attempt in range(1, RETRIES + 1):
            try:
                async with connection(self._pool, self._timeout) as conn:
                    times = self._clock.key_times(self._key_ttl)
                    return await commit_batch(conn, batch, times)
            except asyncpg.TransactionRollbackError as e:
                if attempt == RETRIES:
                    raise
                logger.info("write batch retried after %s (attempt %d)", e.sqlstate, attempt)
            except CommitUnknown:
                await self._pool.expire_connections()
                raise
            except UNAVAILABLE:
                # Nothing was committed. After a server restart every pooled connection
                # is dead: drop them all and try once more on a fresh one.
                await self._pool.expire_connections()
                if reconnected:
                    raise
                reconnected = True
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Commit everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
