"""The dashboard page at ``/`` and its script and stylesheet at ``/static/{filename}``.

Only the packaged files are served, by exact name, with fixed content types: no directory
walk, no dot segments, and a missing file is a 404 problem like any other.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web

from app.errors import NotFound

NO_CACHE = {"Cache-Control": "no-cache"}
# The assets the page loads, with their content types (fixed here: the platform's
# mimetypes table differs between machines).
ASSETS = {
    "dashboard.js": "text/javascript",
    "exact-json.js": "text/javascript",
    "dashboard.css": "text/css",
}


def static_dir() -> Path:
    """The packaged asset folder (``app/static``)."""
    return Path(str(resources.files("app") / "static"))


async def dashboard(request: web.Request) -> web.FileResponse:
    """The dashboard's HTML page."""
    return web.FileResponse(static_dir() / "index.html", headers=NO_CACHE)


async def asset(request: web.Request) -> web.FileResponse:
    """One of the dashboard's packaged assets, by exact file name."""
    name = request.match_info["filename"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound("no such asset")
    return web.FileResponse(
        static_dir() / name, headers={**NO_CACHE, "Content-Type": f"{content_type}; charset=utf-8"}
    )
