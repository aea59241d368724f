"""A peer for ``make bench``: counters in PostgreSQL, one ``UPDATE … RETURNING`` per request.

What a user would build with PostgreSQL instead of lockstep: each request's increment is
one autocommitted statement through an asyncpg pool (10 connections per worker, lockstep's
own default), so PostgreSQL's row lock orders the increments of a counter and its group
commit shares the WAL flushes between concurrent transactions (``fsync`` and
``synchronous_commit`` on: every answer is durable).

    POST /counters/{name}/increment   ``{"name": ..., "value": N}``
    GET  /counters/{name}             the committed value, without counting
    GET  /counters?prefix=P           every counter named P...: ``{"items": [...], "next": null}``
    GET  /readyz                      200 once the table exists
    anything else counts one access: ``Resource accessed N times.``

``BENCH_POSTGRES_URL`` names the database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

POOL_SIZE = 10
_TEXT = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool")

# Both workers start at once: the advisory lock lets one of them create the table.
_SCHEMA = """
SELECT pg_advisory_xact_lock(7);
CREATE TABLE IF NOT EXISTS counters (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO counters VALUES ('access', 0) ON CONFLICT DO NOTHING;
"""


async def access(request: web.Request) -> web.Response:
    """Count one access, like lockstep's GET /access."""
    await request.read()
    value = await request.app[POOL].fetchval(
        "UPDATE counters SET value = value + 1 WHERE name = 'access' RETURNING value"
    )
    return web.Response(body=b"Resource accessed %d times." % value, headers=_TEXT)


async def increment(request: web.Request) -> web.Response:
    await request.read()
    name = request.match_info["name"]
    value = await request.app[POOL].fetchval(
        "INSERT INTO counters VALUES ($1, 1)"
        " ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
        name,
    )
    return web.json_response({"name": name, "value": value})


async def committed_value(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    value = await request.app[POOL].fetchval("SELECT value FROM counters WHERE name = $1", name)
    if value is None:
        raise web.HTTPNotFound()
    return web.json_response({"name": name, "value": value})


async def committed_values(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch(
        "SELECT name, value FROM counters WHERE starts_with(name, $1) ORDER BY name",
        request.query["prefix"],
    )
    items = [{"name": name, "value": value} for name, value in rows]
    return web.json_response({"items": items, "next": None})


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _pool(app: web.Application) -> AsyncIterator[None]:
    url = os.environ["BENCH_POSTGRES_URL"]
    pool = await asyncpg.create_pool(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_SCHEMA)
    app[POOL] = pool
    yield
    await pool.close()


async def create_app() -> web.Application:
    """The factory gunicorn calls: ``bench.postgres_peer:create_app``."""
    app = web.Application()
    app.cleanup_ctx.append(_pool)
    app.router.add_get("/readyz", ready)
    app.router.add_post("/counters/{name}/increment", increment)
    app.router.add_get("/counters/{name}", committed_value)
    app.router.add_get("/counters", committed_values)
    app.router.add_route("*", "/{tail:.*}", access)
    return app
