"""Background upkeep that must never hold up requests: purging expired keys and old changes,
and ending expired leases.

Keys and changes are deleted a bounded batch per write transaction,
``LOCKSTEP_IDEMPOTENCY_PURGE_BATCH`` rows at most, every
``LOCKSTEP_IDEMPOTENCY_PURGE_INTERVAL`` seconds, in every worker. Every second, leases past
their expiry are ended (an ``expired`` entry in the feed, and the lock handed to the next
waiter), one lock per step and at most that many locks a round: a lease is judged expired
whenever it is read anyway, so this is what tells watchers and wakes waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from app.domain import iso_time
from app.errors import LockTimeout, StorageUnavailable
from app.leases import CHECK_IN_S, Settle
from app.locks import LOCKS
from app.settings import SETTINGS
from app.storage import STORAGE

logger = logging.getLogger(__name__)


async def purge_expired_keys(app: web.Application) -> int:
    """Delete every expired key, a small write transaction at a time; returns how many."""
    storage, batch = app[STORAGE], app[SETTINGS].idempotency_purge_batch
    total = 0
    while True:
        deleted = await storage.purge_expired_keys(batch)
        total += deleted
        if deleted < batch:
            return total
        # Let queued requests' batches go first between two purge transactions.
        await asyncio.sleep(0)


async def purge_old_changes(app: web.Application) -> int:
    """Delete the change-log entries older than the retention, whole revisions, in batches."""
    settings = app[SETTINGS]
    storage, batch = app[STORAGE], settings.idempotency_purge_batch
    cutoff = iso_time(time.time() - settings.changes_retention)
    total = 0
    while True:
        deleted = await storage.purge_changes(cutoff, batch)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)


async def end_expired_leases(app: web.Application) -> int:
    """Settle every lock whose lease has expired but is still recorded; returns how many."""
    storage, locks = app[STORAGE], app[LOCKS]
    names = await storage.ended_locks(app[SETTINGS].idempotency_purge_batch)
    for name in names:
        async with locks.hold(f"lock:{name}"):
            await storage.lock_step(name, Settle())
    return len(names)


async def _expire_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(CHECK_IN_S)
        try:
            ended = await end_expired_leases(app)
        except (StorageUnavailable, LockTimeout) as e:
            logger.warning("ending expired leases failed: %s", e.detail)
        else:
            if ended:
                logger.debug("ended %d expired leases", ended)


async def _purge_forever(app: web.Application) -> None:
    interval = app[SETTINGS].idempotency_purge_interval
    while True:
        await asyncio.sleep(interval)
        for what, purge in (
            ("expired idempotency keys", purge_expired_keys),
            ("old change-log entries", purge_old_changes),
        ):
            try:
                deleted = await purge(app)
            except StorageUnavailable as e:
                logger.warning("purging %s failed: %s", what, e.detail)
            else:
                if deleted:
                    logger.info("purged %d %s", deleted, what)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the purge loop while the app serves; stop it before storage closes."""
    tasks = [
        asyncio.create_task(_purge_forever(app), name="lockstep-purge-keys"),
        asyncio.create_task(_expire_forever(app), name="lockstep-expire-leases"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
