"""The one aiohttp middleware every request passes through.

In order, for each request, ``serve``:
- gives it its id (returned as ``X-Request-ID``);
- refuses what must not reach a handler: oversized headers and, with a tokens file
  configured, a bearer token that does not cover the scope the route table gives the route
  (``app.routes.route_scopes``);
- answers every error as an RFC 9457 problem body: the service's own errors, aiohttp's (the
  router's 404, and 405 with ``Allow``), and an unexpected exception, which it logs once
  with the request id and answers 500 without internals; a redirect goes out as aiohttp
  sends it;
- once the final status is known, problem bodies included, counts, times and logs it
  (``app.observe``).

One middleware rather than three: every layer aiohttp wraps around a handler costs CPU on
every request (``docs/design.md``).

It applies to every request, whatever route it matched or none, routes added after
``create_app`` included: those need the scope their method implies (``BY_METHOD``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from app.access_log import AccessLog
from app.auth import BY_METHOD, RouteScope, authorize
from app.errors import LockstepError, MethodNotAllowed, NoSuchPath
from app.limits import check_header_size
from app.logs import CURRENT, REQUEST_ID_HEADER, RequestContext, request_id_from
from app.metrics import Metrics
from app.observe import CLIENT_CLOSED, answered
from app.problems import error_response, problem_response
from app.tokens import TokenStore

logger = logging.getLogger(__name__)

# The scope each route needs, by method and path template.
Scopes = Mapping[tuple[str, str], RouteScope]
# The id ``serve`` gave the request (also its X-Request-ID).
REQUEST_ID = web.RequestKey("request_id", str)


def middlewares(
    max_header_bytes: int,
    metrics: Metrics,
    access_log: AccessLog | None,
    tokens: TokenStore | None,
    scopes: Scopes,
) -> list[Middleware]:
    """This app's middleware list: the one that serves every request."""

    @web.middleware
    async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        context = RequestContext(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
        request[REQUEST_ID] = context.request_id
        token = CURRENT.set(context)
        status = 500
        try:
            try:
                check_header_size(request, max_header_bytes)
                if tokens is not None:
                    authorize(request, tokens, scope_of(request, scopes))
                response = await handler(request)
            except LockstepError as e:
                response = error_response(e)
            except web.HTTPException as e:
                if e.status >= 400:
                    response = _http_problem(request, e)
                else:  # a redirect
                    status = e.status
                    e.headers[REQUEST_ID_HEADER] = context.request_id
                    raise
            except asyncio.CancelledError:
                status = CLIENT_CLOSED
                raise
            except Exception:
                response = _internal_error(request)
            status = response.status
            if not response.prepared:  # a stream (events) sets the header before it starts
                response.headers[REQUEST_ID_HEADER] = context.request_id
            return response
        finally:
            CURRENT.reset(token)
            answered(request, metrics, access_log, context, status, started)

    return [serve]


def scope_of(request: web.Request, scopes: Scopes) -> RouteScope:
    """The scope the request's route needs; a URL no route matched needs its method's."""
    resource = request.match_info.route.resource
    if resource is None:
        return BY_METHOD
    return scopes.get((request.method, resource.canonical), BY_METHOD)


def _http_problem(request: web.Request, e: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx (the router's 404 and 405, a 413 ...) as a problem body."""
    path = request.rel_url.raw_path
    if isinstance(e, web.HTTPMethodNotAllowed):
        return error_response(MethodNotAllowed(path, e.allowed_methods))
    if isinstance(e, web.HTTPNotFound):
        return error_response(NoSuchPath(path))
    detail = e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason
    return problem_response(e.status, e.reason, detail, None, e.headers)


def _internal_error(request: web.Request) -> web.Response:
    """Log an unexpected error once; the client gets a 500 with the same request id."""
    request_id = request[REQUEST_ID]
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
