"""Operational endpoints: liveness and readiness, and the flags readiness reports."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from app.errors import Unavailable
from app.storage import STORAGE
from app.views.bodies import Status
from app.views.common import json_response


@dataclass(slots=True)
class Health:
    """Process-level flags /readyz reports."""

    shutting_down: bool = False


HEALTH = web.AppKey("health", Health)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return json_response(Status("ok"))


async def readyz(request: web.Request) -> web.Response:
    """The database answers and the worker is not shutting down.

    Writes failing for lack of disk space (or I/O, or a read-only file) keep it 200, since
    reads still work and writes heal by themselves once space returns, but say so.
    """
    if request.app[HEALTH].shutting_down:
        raise Unavailable("shutting down")
    storage = request.app[STORAGE]
    await storage.ping()
    return json_response(Status("ready", storage.write_trouble()))
