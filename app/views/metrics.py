"""The Prometheus scrape endpoint."""

from __future__ import annotations

from aiohttp import web

from app.metrics import CONTENT_TYPE
from app.observe import sample_locks
from app.state import get_metrics


async def metrics(request: web.Request) -> web.Response:
    """Every worker's metrics, added up, in the Prometheus text format."""
    # This worker's gauges are fresh; the others' are at most one sampling interval old.
    sample_locks(request.app)
    body = await get_metrics(request).render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
