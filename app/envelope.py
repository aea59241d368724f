"""The envelope every request's handler runs in, and RFC 9457 problem bodies.

The envelope does five jobs for every request: it gives the request its id (returned as
``X-Request-ID``), refuses oversized headers, checks the bearer token when a tokens file is
configured, turns every error into a problem body, and counts, times and logs the answer.
Observation is outermost, so it sees the final status of every answer, problem bodies
included.

It wraps each route's handler when the route table is built (``app.routes``) instead of
being an aiohttp middleware. With any middleware at all, aiohttp runs every request
through a layer of its own as well (``_fix_request_current_app``) and looks the chain up
in a cache; A/B runs measured that at 1.5-2.5 µs of CPU a request on the fastest
endpoints. A URL no route matches goes to a catch-all route in the same envelope, so a 404
or 405 is a problem body too. The app refuses to start if some route's handler is not
enveloped (``check_enveloped``), so a route added later cannot slip past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any, Protocol

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from app.access_log import AccessLog
from app.auth import BY_METHOD, RouteScope, authorize
from app.errors import LockstepError
from app.limits import check_header_size
from app.logs import CURRENT, REQUEST_ID_HEADER, RequestContext, request_id_from
from app.metrics import Metrics
from app.observe import CLIENT_CLOSED, answered
from app.tokens import TokenStore

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_DROP = {"Content-Type", "Content-Length"}

# Every handler ``envelope_for`` has wrapped, so ``check_enveloped`` can tell.
_ENVELOPED: weakref.WeakSet[Handler] = weakref.WeakSet()
_encode = msgspec.json.Encoder().encode


class Envelope(Protocol):
    """Wraps one route's handler; ``route`` names it in metrics and logs (default: its template).

    ``scope`` is the token scope the route needs (``app.routes`` declares it per route).
    """

    def __call__(
        self, handler: Handler, route: str | None = None, scope: RouteScope = BY_METHOD
    ) -> Handler: ...


# The envelope of this app, for routes added after create_app (bench, tests).
ENVELOPE = web.AppKey("envelope", Envelope)
# The id the envelope gave the request (also its X-Request-ID).
REQUEST_ID = web.RequestKey("request_id", str)


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


def envelope_for(
    max_header_bytes: int,
    metrics: Metrics,
    tokens: TokenStore | None,
    access_log: AccessLog | None = None,
) -> Envelope:
    """The function that wraps each route's handler in this app's envelope."""

    def envelope(
        handler: Handler, route: str | None = None, scope: RouteScope = BY_METHOD
    ) -> Handler:
        async def enveloped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            context = RequestContext(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
            request[REQUEST_ID] = context.request_id
            token = CURRENT.set(context)
            status = 500
            try:
                try:
                    check_header_size(request, max_header_bytes)
                    if tokens is not None:
                        authorize(request, tokens, scope)
                    response = await handler(request)
                except LockstepError as e:
                    response = problem_response(
                        e.status, e.title, e.detail, e.slug, e.headers, e.extra
                    )
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
                answered(request, metrics, access_log, route, context, status, started)

        _ENVELOPED.add(enveloped)
        return enveloped

    return envelope


def check_enveloped(app: web.Application) -> None:
    """Refuse to run an app with a route whose handler skips the envelope."""
    bare = [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if route.handler not in _ENVELOPED
    ]
    if bare:
        raise RuntimeError(f"routes without the envelope (see app.envelope): {', '.join(bare)}")


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
