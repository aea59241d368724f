"""Per-request observation: the request metrics and one log line, plus the lock gauges.

The envelope (``app.envelope``) calls ``answered`` for every request once its final status
is known, problem bodies included. Its cost per request is a clock read, two dictionary
tallies (flushed to Prometheus once a second) and, with info logging on, one log record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from app.logs import ACCESS_LOGGER, RequestContext
from app.metrics import UNMATCHED, Metrics
from app.state import COUNTERS, ITEMS, LOCKS, METRICS

access_log = logging.getLogger(ACCESS_LOGGER)

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
    route: str | None,
    context: RequestContext,
    status: int,
    started: float,
) -> None:
    """Count and time one answered request, and log its line (when info is on).

    ``route`` is the metrics label, or None for the route template that matched.
    """
    elapsed = time.perf_counter() - started
    if route is None:
        route = route_label(request)
    metrics.observe_request(route, request.method, status, elapsed)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "request_id": context.request_id,
                "method": request.method,
                "route": route,
                # Without the query string, which may carry secrets.
                "path": request.rel_url.raw_path[:256],
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "lock_wait_ms": round(context.lock_wait * 1000, 3),
            },
        )


def sample_locks(app: web.Application) -> None:
    """Set the lock gauges from this worker: locks held, and requests queued behind them."""
    # Requests wait in the combiners' queues (behind a batch, or behind a lock held
    # elsewhere); the registry itself never has more than one waiter per resource.
    waiting = 0
    for key in (COUNTERS, ITEMS):
        combiner = app.get(key)
        if combiner is not None:
            waiting += combiner.waiting()
    app[METRICS].sample_locks(app[LOCKS].held(), waiting)
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


def setup_observability(app: web.Application, metrics: Metrics) -> None:
    """Install the metrics object and the lock sampler."""
    app[METRICS] = metrics
    app.cleanup_ctx.append(_sample_locks)
