"""The application factory gunicorn calls: ``app.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from app.access_log import AccessLog
from app.auth import TOKENS, setup_auth
from app.combining import Combiner
from app.events import EVENTS, EventHub
from app.handovers import HAND_OVERS, HandOvers
from app.housekeeping import purge_ctx
from app.idempotency import IN_FLIGHT, InFlight
from app.limits import parser_limits
from app.locks import LOCKS, LockRegistry
from app.metrics import METRICS, Metrics
from app.middleware import middlewares
from app.observe import setup_lock_sampler, setup_observability
from app.openapi import openapi_document
from app.parser_errors import answer_parser_errors
from app.routes import route_scopes, setup_routes
from app.settings import SETTINGS, Settings
from app.storage import STORAGE
from app.storage.backends import open_storage
from app.views.counters import COUNTER_WRITES
from app.views.docs import API_DOCS, ApiDocs
from app.views.health import HEALTH, Health
from app.views.records import RECORD_WRITES

logger = logging.getLogger(__name__)


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the database before the first request; close it after the last one finished."""
    storage = await open_storage(app[SETTINGS], app[METRICS])
    app[STORAGE] = storage
    settings = app[SETTINGS]
    app[EVENTS] = EventHub(
        storage,
        settings.events_poll_interval,
        settings.events_max_pending,
        settings.locks_poll_interval,
    )
    app[EVENTS].listen("lock", app[HAND_OVERS])
    locks = app[LOCKS]
    metrics = app[METRICS]
    app[COUNTER_WRITES] = Combiner("counter", locks, storage.apply_counter_ops, metrics)
    app[RECORD_WRITES] = Combiner("item", locks, storage.apply_record_ops, metrics)
    yield
    await app[EVENTS].close()
    await storage.close()


async def _mark_shutting_down(app: web.Application) -> None:
    # on_shutdown runs while requests are still in flight: only flip readiness here.
    app[HEALTH].shutting_down = True
    # Event streams never finish on their own: end them so shutdown need not wait them out.
    if EVENTS in app:
        await app[EVENTS].close()


async def create_app(settings: Settings | None = None) -> web.Application:
    """Build the application; nothing is opened until the app starts."""
    settings = settings or Settings()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args=parser_limits(settings.max_header_bytes),
    )
    answer_parser_errors()  # aiohttp would log and echo the bytes its parser refuses
    app[SETTINGS] = settings
    app[HEALTH] = Health()
    metrics = Metrics()
    access_log = None
    if settings.access_log_on:
        access_log = AccessLog(
            settings.access_log,
            settings.log_format,
            settings.trusted_proxies,
            settings.access_log_flush,
        )
    setup_observability(app, metrics, access_log)
    app[LOCKS] = LockRegistry(settings.lock_timeout)
    app[IN_FLIGHT] = InFlight()
    app[HAND_OVERS] = HandOvers()
    tokens = setup_auth(app, settings)
    if tokens is not None:
        app[TOKENS] = tokens
    app.middlewares.extend(
        middlewares(settings.max_header_bytes, metrics, access_log, tokens, route_scopes())
    )
    setup_routes(app)
    app[API_DOCS] = ApiDocs(partial(openapi_document, settings))
    # Opened in this order, closed in reverse. When one fails to open, aiohttp's gunicorn
    # worker closes none of those already open, so none before storage (which fails when
    # the database cannot be opened) may start a task.
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(purge_ctx)
    setup_lock_sampler(app)  # it reads the combiners storage made
    app.on_shutdown.append(_mark_shutting_down)
    return app
