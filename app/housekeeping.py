"""Background upkeep that must never hold up requests: purging expired idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

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


async def _purge_forever(app: web.Application) -> None:
    interval = app[SETTINGS].idempotency_purge_interval
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await purge_expired_keys(app)
        except StorageUnavailable as e:
            logger.warning("purging expired idempotency keys failed: %s", e.detail)
        else:
            if deleted:
                logger.info("purged %d expired idempotency keys", deleted)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the purge loop while the app serves; stop it before storage closes."""
    task = asyncio.create_task(_purge_forever(app), name="lockstep-purge-keys")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
