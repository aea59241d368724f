"""The Prometheus scrape endpoint."""

from __future__ import annotations

from aiohttp import web

from app.metrics import CONTENT_TYPE
from app.state import LOCKS, get_metrics


async def metrics(request: web.Request) -> web.Response:
    """Every worker's metrics, added up, in the Prometheus text format."""
    metrics = get_metrics(request)
    locks = request.app[LOCKS]
    # This worker's gauges are fresh; the others' are at most one sampling interval old.
    metrics.sample_locks(locks.held(), locks.waiting())
    body = await metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
