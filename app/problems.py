"""RFC 9457 problem bodies: the ``application/problem+json`` every error is answered with."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from app.errors import LockstepError

PROBLEM = "application/problem+json"
# Headers of an error's own that a problem response sets itself.
_DROP = {"Content-Type", "Content-Length"}

_encode = msgspec.json.Encoder().encode


def problem_body(
    status: int,
    title: str,
    detail: str,
    slug: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The JSON bytes of a problem document."""
    body = {
        "type": f"urn:lockstep:problem:{slug}" if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    return _encode(body)


def problem_response(
    status: int,
    title: str,
    detail: str,
    slug: str | None = None,
    headers: Any = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """An ``application/problem+json`` response."""
    body = problem_body(status, title, detail, slug, extra)
    kept = {k: v for k, v in (headers or {}).items() if k not in _DROP}
    return web.Response(body=body, status=status, content_type=PROBLEM, headers=kept)


def error_response(error: LockstepError) -> web.Response:
    """The problem response for one of the service's own errors."""
    return problem_response(
        error.status, error.title, error.detail, error.slug, error.headers, error.extra
    )
