"""Operational endpoints: liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from app.errors import Unavailable
from app.state import get_health, get_storage
from app.views.common import json_response


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The database answers and the worker is not shutting down."""
    if get_health(request).shutting_down:
        raise Unavailable("shutting down")
    await get_storage(request).ping()
    return json_response({"status": "ready"})
