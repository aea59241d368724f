"""A peer for ``make bench``: counters in Redis, one ``INCR`` per request, served by aiohttp.

What a user would build with Redis instead of lockstep: each request's increment is one
``INCR`` through redis-py's asyncio client (a connection pool per worker, hiredis parsing).
The benchmark runs it against a ``redis-server`` with ``appendfsync always`` (Redis answers
only after the write is fsynced: durable like lockstep's commits) and with the default
``everysec`` (a crash can lose the last second of increments).

    POST /counters/{name}/increment   ``{"name": ..., "value": N}``
    GET  /counters/{name}             the value, without counting (exactly-once check)
    GET  /counters?prefix=P           every counter named P...: ``{"items": [...], "next": null}``
    GET  /readyz                      200 once Redis answers
    anything else counts one access: ``Resource accessed N times.``

``BENCH_REDIS_URL`` names the server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import redis.asyncio as redis
from aiohttp import web

_TEXT = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
REDIS = web.AppKey("redis", redis.Redis)


async def access(request: web.Request) -> web.Response:
    """Count one access, like lockstep's GET /access."""
    await request.read()
    value = await request.app[REDIS].incr("access")
    return web.Response(body=b"Resource accessed %d times." % value, headers=_TEXT)


async def increment(request: web.Request) -> web.Response:
    await request.read()
    name = request.match_info["name"]
    value = await request.app[REDIS].incr(name)
    return web.json_response({"name": name, "value": value})


async def committed_value(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    value = await request.app[REDIS].get(name)
    if value is None:
        raise web.HTTPNotFound()
    return web.json_response({"name": name, "value": int(value)})


async def committed_values(request: web.Request) -> web.Response:
    r = request.app[REDIS]
    names = sorted([key async for key in r.scan_iter(match=f"{request.query['prefix']}*")])
    values = await r.mget(names) if names else []
    items = [{"name": n.decode(), "value": int(v or 0)} for n, v in zip(names, values, strict=True)]
    return web.json_response({"items": items, "next": None})


async def ready(request: web.Request) -> web.Response:
    await request.app[REDIS].ping()
    return web.Response(text="ok")


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    yield
    await client.aclose()


async def create_app() -> web.Application:
    """The factory gunicorn calls: ``bench.redis_peer:create_app``."""
    app = web.Application()
    app.cleanup_ctx.append(_client)
    app.router.add_get("/readyz", ready)
    app.router.add_post("/counters/{name}/increment", increment)
    app.router.add_get("/counters/{name}", committed_value)
    app.router.add_get("/counters", committed_values)
    app.router.add_route("*", "/{tail:.*}", access)
    return app
