"""Background upkeep that must never hold up requests: purging expired keys and old changes.

Both are deleted a bounded batch per write transaction, ``LOCKSTEP_IDEMPOTENCY_PURGE_BATCH``
rows at most, every ``LOCKSTEP_IDEMPOTENCY_PURGE_INTERVAL`` seconds, in every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from app.domain import iso_time
from app.errors import StorageUnavailable
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
    task = asyncio.create_task(_purge_forever(app), name="lockstep-purge-keys")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
