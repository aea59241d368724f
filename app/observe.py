"""Per-request observation: the request id, one log line and the request metrics.

The middleware sits outermost, so it sees the final status of every answer, problem bodies
included, and everything logged during the request carries the request's id. Its cost per
request is a clock read, a context variable, two metric updates and one log record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from app.logs import ACCESS_LOGGER, CURRENT, REQUEST_ID_HEADER, RequestContext, request_id_from
from app.metrics import UNMATCHED, Metrics
from app.state import COUNTERS, ITEMS, LOCKS, METRICS, REQUEST_ID

access_log = logging.getLogger(ACCESS_LOGGER)

LOCK_SAMPLE_INTERVAL = 1.0
# nginx's convention for "the client went away before the answer".
CLIENT_CLOSED = 499


def route_label(request: web.Request) -> str:
    """The route template that matched (``/counters/{name}``), never the client's path."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, then count, time and log it once it is answered."""
    started = time.perf_counter()
    context = RequestContext(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
    request[REQUEST_ID] = context.request_id
    token = CURRENT.set(context)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        CURRENT.reset(token)
        elapsed = time.perf_counter() - started
        route = route_label(request)
        request.app[METRICS].observe_request(route, request.method, status, elapsed)
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


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def sample_locks(app: web.Application) -> None:
    """Set the lock gauges from this worker: locks held, and requests queued behind them."""
    # A combiner's queue includes a leader still waiting for the lock, so the registry's
    # own waiter count would count it twice.
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
    """Install the metrics object, the X-Request-ID response header and the lock sampler."""
    app[METRICS] = metrics
    app.on_response_prepare.append(_add_request_id)
    app.cleanup_ctx.append(_sample_locks)
