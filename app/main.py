"""The application factory gunicorn calls: ``app.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from app.auth import authenticate, setup_auth
from app.combining import Combiner
from app.limits import limit_headers, parser_limits
from app.locks import LockRegistry
from app.middlewares import problems
from app.routes import setup_routes
from app.settings import Settings
from app.state import COUNTERS, HEALTH, ITEMS, LOCKS, SETTINGS, STORAGE, Health
from app.storage import open_storage

logger = logging.getLogger(__name__)


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the database before the first request; close it after the last one finished."""
    storage = await open_storage(app[SETTINGS])
    app[STORAGE] = storage
    locks = app[LOCKS]
    app[COUNTERS] = Combiner("counter", locks, storage.apply_counter_ops)
    app[ITEMS] = Combiner("item", locks, storage.apply_item_ops)
    yield
    await storage.close()


async def _mark_shutting_down(app: web.Application) -> None:
    # on_shutdown runs while requests are still in flight: only flip readiness here.
    app[HEALTH].shutting_down = True


async def create_app(settings: Settings | None = None) -> web.Application:
    """Build the application; nothing is opened until the app starts."""
    settings = settings or Settings()
    app = web.Application(
        middlewares=[problems, limit_headers, authenticate],
        client_max_size=settings.max_body_bytes,
        handler_args=parser_limits(settings.max_header_bytes),
    )
    app[SETTINGS] = settings
    app[HEALTH] = Health()
    app[LOCKS] = LockRegistry(settings.lock_timeout)
    setup_routes(app)
    setup_auth(app, settings)
    app.cleanup_ctx.append(_storage_ctx)
    app.on_shutdown.append(_mark_shutting_down)
    return app
