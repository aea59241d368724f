"""The one middleware every request passes through, and RFC 9457 problem bodies.

``envelope`` does four jobs that each used to be a middleware of their own: it gives the
request its id (returned as ``X-Request-ID``), refuses oversized headers, turns every error
into a problem body, and counts, times and logs the answer. One layer instead of three
(plus aiohttp's own wrapper, and a response-prepare signal for the id header) saves a
few microseconds on every request, which ``make bench`` sees on the fastest endpoints.
The order inside is the order the layers had: observation outermost, so it sees the final
status of every answer, problem bodies included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from app.errors import LockstepError
from app.limits import check_header_size
from app.logs import CURRENT, REQUEST_ID_HEADER, RequestContext, request_id_from
from app.observe import CLIENT_CLOSED, answered
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
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, header limit, problem bodies, metrics and the log line for one request."""
    started = time.perf_counter()
    context = RequestContext(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
    request[REQUEST_ID] = context.request_id
    token = CURRENT.set(context)
    status = 500
    try:
        try:
            check_header_size(request)
            response = await handler(request)
        except LockstepError as e:
            response = problem_response(e.status, e.title, e.detail, e.slug, e.headers)
        except web.HTTPException as e:
            if e.status < 400:  # a redirect: aiohttp sends it as it is
                status = e.status
                e.headers[REQUEST_ID_HEADER] = context.request_id
                raise
            response = _http_problem(e)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        except Exception:
            response = _internal_error(request, context.request_id)
        status = response.status
        if not response.prepared:  # a stream (events) sets the header before it starts
            response.headers[REQUEST_ID_HEADER] = context.request_id
        return response
    finally:
        CURRENT.reset(token)
        answered(request, context, status, started)


def _http_problem(e: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx (404, 405, 413 ...) as a problem body."""
    detail = e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason
    return problem_response(e.status, e.reason, detail, None, e.headers)


def _internal_error(request: web.Request, request_id: str) -> web.Response:
    """Log an unexpected error once; the client gets a 500 with the same request id."""
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
        extra={"request_id": request_id},
    )
