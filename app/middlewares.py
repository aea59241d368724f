"""Middleware that turns every error into an RFC 9457 problem body."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from app.errors import LockstepError
from app.state import REQUEST_ID

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_DROP = {"Content-Type", "Content-Length"}


def problem_body(
    status: int,
    title: str,
    detail: str,
    slug: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The JSON bytes of a problem document."""
    from app.views.common import _encode

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


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map domain errors and HTTP errors to problem bodies; hide unexpected ones behind a 500."""
    try:
        return await handler(request)
    except LockstepError as e:
        return problem_response(e.status, e.title, e.detail, e.slug, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail = e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason
        return problem_response(e.status, e.reason, detail, None, e.headers)
    except Exception:
        # Logged once, here; the log record and the body carry the same request id.
        request_id = request.get(REQUEST_ID)
        logger.exception(
            "unhandled error in %s %s",
            request.method,
            request.rel_url.raw_path[:256],
            extra={"request_id": request_id},
        )
        return problem_response(
            500,
            "Internal Server Error",
            "an unexpected error occurred",
            extra={"request_id": request_id} if request_id else None,
        )
