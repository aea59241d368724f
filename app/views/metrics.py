"""The Prometheus scrape endpoint, and the dashboard's small summary of the same figures."""

from __future__ import annotations

from aiohttp import web

from app.metrics import CONTENT_TYPE, METRICS
from app.observe import sample_locks
from app.views.common import NO_STORE, json_response


async def metrics(request: web.Request) -> web.Response:
    """Every worker's metrics, added up, in the Prometheus text format."""
    # This worker's gauges are fresh; the others' are at most one sampling interval old.
    sample_locks(request.app)
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def stats(request: web.Request) -> web.Response:
    """Totals over every worker (requests, lock waits, commits) as one JSON object.

    The dashboard polls this with a ``read`` token and derives rates from two samples;
    ``/metrics`` itself stays behind the ``metrics`` scope.
    """
    sample_locks(request.app)
    return json_response(await request.app[METRICS].summary(), headers=NO_STORE)
