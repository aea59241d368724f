"""The route table: every URL the service answers and the handler behind it."""

from __future__ import annotations

from aiohttp import web

from app.views import counters, dashboard, docs, events, health, items, metrics


def setup_routes(app: web.Application) -> None:
    router = app.router
    # GET /access changes state, so HEAD must not run it (405 instead).
    router.add_get("/access", counters.access, allow_head=False)
    # aiohttp tries the resources under one prefix (/counters, /items) in the order they
    # are added here: the busiest come first, so a write matches at the first try.
    router.add_post("/counters/{name}/increment", counters.increment)
    router.add_get("/counters/{name}", counters.get_counter)
    router.add_put("/counters/{name}", counters.set_counter)
    router.add_delete("/counters/{name}", counters.delete_counter)
    router.add_get("/counters", counters.list_counters)
    router.add_get("/items/{id}", items.get_item)
    router.add_put("/items/{id}", items.put_item)
    router.add_patch("/items/{id}", items.patch_item)
    router.add_delete("/items/{id}", items.delete_item)
    router.add_get("/items", items.list_items)
    router.add_get("/healthz", health.healthz)
    router.add_get("/readyz", health.readyz)
    router.add_get("/openapi.json", docs.openapi_json)
    router.add_get("/docs", docs.docs)
    router.add_get("/metrics", metrics.metrics)
    router.add_get("/stats", metrics.stats)
    router.add_get("/events", events.events)
    router.add_get("/counters/{name}/events", events.counter_events)
    router.add_get("/items/{id}/events", events.item_events)
    router.add_get("/", dashboard.dashboard)
    router.add_get("/static/{filename}", dashboard.asset)
