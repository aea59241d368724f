"""The baseline: the smallest aiohttp app, served under lockstep's own gunicorn settings.

Every method and path gets the same short text answer, so each wrk workload (with its
Lua script, bodies and all) can be replayed against it unchanged; the ratio of lockstep's
req/s to this app's is the share of the framework's limit lockstep reaches.
"""

from __future__ import annotations

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    """Read the body like a real handler would, answer a fixed text."""
    await request.read()
    return web.Response(text="Hello, world")


async def create_app() -> web.Application:
    """The factory gunicorn calls: ``bench.hello:create_app``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return app
