"""Per-request observation: the request metrics and the access line, plus the lock gauges.

The middleware (``app.middleware``) calls ``answered`` for every request once its
final status is known, problem bodies included. Its cost per request is a clock read, two
dictionary tallies (flushed to Prometheus once a second) and, with the access log on, one
line appended to its buffer (``app.access_log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from app.access_log import ACCESS_LOG, AccessLog
from app.locks import LOCKS
from app.logs import RequestContext
from app.metrics import METRICS, UNMATCHED, Metrics

LOCK_SAMPLE_INTERVAL = 1.0
# nginx's convention for "the client went away before the answer".
CLIENT_CLOSED = 499


def route_label(request: web.Request) -> str:
    """The route template that matched (``/counters/{name}``), never the client's path."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


def answered(
    request: web.Request,
    metrics: Metrics,
    access_log: AccessLog | None,
    context: RequestContext,
    status: int,
    started: float,
) -> None:
    """Count and time one answered request, and buffer its access line (when the log is on)."""
    elapsed = time.perf_counter() - started
    route = route_label(request)
    metrics.observe_request(route, request.method, status, elapsed)
    if access_log is not None:
        access_log.line(request, route, status, elapsed, context.lock_wait, context.request_id)


def sample_locks(app: web.Application) -> None:
    """Set the lock gauges from this worker: locks held, and requests queued behind them."""
    locks = app[LOCKS]
    app[METRICS].sample_locks(locks.held(), locks.waiting())
    app[METRICS].flush()


async def _sample_locks(app: web.Application) -> AsyncIterator[None]:
    """Publish the worker's held/waiting lock counts once a second (gauges, summed on scrape)."""

    async def sample() -> None:
        while True:
            sample_locks(app)
            await asyncio.sleep(LOCK_SAMPLE_INTERVAL)

    task = asyncio.create_task(sample(), name="lockstep-lock-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[METRICS].flush()


async def _access_log(app: web.Application) -> AsyncIterator[None]:
    """Open the access log before the first request; write its last lines after the last one."""
    access_log = app[ACCESS_LOG]
    if access_log is None:
        yield
        return
    access_log.open()
    try:
        yield
    finally:
        access_log.close()


def setup_observability(
    app: web.Application, metrics: Metrics, access_log: AccessLog | None
) -> None:
    """Install the metrics object and the access log.

    The access log comes first, so it is open before anything else starts and closed after
    everything else has stopped.
    """
    app[METRICS] = metrics
    app[ACCESS_LOG] = access_log
    app.cleanup_ctx.append(_access_log)


def setup_lock_sampler(app: web.Application) -> None:
    """Start the lock sampler with the app (after storage, whose combiners it reads)."""
    app.cleanup_ctx.append(_sample_locks)
