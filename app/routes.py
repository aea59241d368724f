"""The route table: every URL the service answers and the handler behind it.

Every handler is registered in the envelope (``app.envelope``: request id, limits, tokens,
problem bodies, metrics). The last route catches every URL the others do not match and
answers 404, or 405 with ``Allow`` when the path exists for other methods, as aiohttp's
router would, but as a problem body.
"""

from __future__ import annotations

from aiohttp import web

from app.envelope import Envelope
from app.errors import MethodNotAllowed, NoSuchPath
from app.metrics import UNMATCHED
from app.views import counters, dashboard, docs, events, health, items, metrics


def setup_routes(app: web.Application, e: Envelope) -> None:
    router = app.router
    # GET /access changes state, so HEAD must not run it (405 instead).
    router.add_get("/access", e(counters.access), allow_head=False)
    # aiohttp tries the resources under one prefix (/counters, /items) in the order they
    # are added here: the busiest come first, so a write matches at the first try.
    router.add_post("/counters/{name}/increment", e(counters.increment))
    router.add_get("/counters/{name}", e(counters.get_counter))
    router.add_put("/counters/{name}", e(counters.set_counter))
    router.add_delete("/counters/{name}", e(counters.delete_counter))
    router.add_get("/counters", e(counters.list_counters))
    router.add_get("/items/{id}", e(items.get_item))
    router.add_put("/items/{id}", e(items.put_item))
    router.add_patch("/items/{id}", e(items.patch_item))
    router.add_delete("/items/{id}", e(items.delete_item))
    router.add_get("/items", e(items.list_items))
    router.add_get("/healthz", e(health.healthz))
    router.add_get("/readyz", e(health.readyz))
    router.add_get("/openapi.json", e(docs.openapi_json))
    router.add_get("/docs", e(docs.docs))
    router.add_get("/metrics", e(metrics.metrics))
    router.add_get("/stats", e(metrics.stats))
    router.add_get("/events", e(events.events))
    router.add_get("/counters/{name}/events", e(events.counter_events))
    router.add_get("/items/{id}/events", e(events.item_events))
    router.add_get("/", e(dashboard.dashboard))
    router.add_get("/static/{filename}", e(dashboard.asset))
    # Last: aiohttp tries it after every other resource, whatever the path.
    router.add_route("*", "/{tail:.*}", e(unmatched, route=UNMATCHED))


async def unmatched(request: web.Request) -> web.StreamResponse:
    """404, or 405 when some route has the path but not the method."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    path = request.rel_url.raw_path
    if allowed:
        raise MethodNotAllowed(path, allowed)
    raise NoSuchPath(path)
