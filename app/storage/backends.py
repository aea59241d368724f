"""Opening the storage backend the settings name: SQLite, or PostgreSQL for a postgresql:// URL."""

from __future__ import annotations

from app.clock import ServiceClock
from app.settings import Settings
from app.storage import Storage, StorageObserver
from app.storage.postgres import PostgresStorage
from app.storage.sqlite import SQLiteStorage


async def open_storage(
    settings: Settings,
    observer: StorageObserver | None = None,
    clock: ServiceClock | None = None,
) -> Storage:
    """Open the backend ``settings`` name, creating or migrating its schema.

    ``clock`` dates Idempotency-Keys (``app.clock``; tests pass one with their own sources).
    """
    if settings.uses_postgres:
        return await PostgresStorage.open(settings, observer, clock)
    return await SQLiteStorage.open(settings, observer, clock)
