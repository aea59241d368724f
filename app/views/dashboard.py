"""The dashboard page at ``/``; its script and stylesheet are served from ``/static``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web


def static_dir() -> Path:
    """The packaged asset folder (``app/static``)."""
    return Path(str(resources.files("app") / "static"))


async def dashboard(request: web.Request) -> web.FileResponse:
    """The dashboard's HTML page."""
    return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})
