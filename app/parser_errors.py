"""What a request the HTTP parser refuses gets: one log line and a problem body, nothing echoed.

aiohttp answers those requests itself, before any route or middleware runs: it logs a
traceback at ERROR and sends a plain-text 400 quoting the offending bytes — up to 100 of a
header too long for ``max_field_size``, or the whole line holding a forbidden byte. That
line may be ``Authorization: Bearer lst_…``, so a real token reached the error log and went
back in the body, and any client could write tracebacks into the log at will.

aiohttp has no hook for this answer (aio-libs/aiohttp#9882): an app's ``handler_args`` reach
the connection's ``RequestHandler``, but its class is fixed and ``handle_error`` builds the
body from the exception's message. So ``answer_parser_errors`` replaces that one method;
every other error it handles (a 500 or 504 from outside the middlewares) still goes to
aiohttp's own.

One parser error is not malformed HTTP: a body in a Content-Encoding aiohttp has no decoder
for (br, zstd), which it refuses as soon as the headers are parsed (``DeflateBuffer``,
``ContentEncodingError``). That one is a 415, as when a handler finds an encoding it does
not know (``app.views.common.read_body``); the connection is closed all the same, since the
body is left unread.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from app.errors import LockstepError, MalformedRequest, UnsupportedEncoding
from app.problems import problem_response

logger = logging.getLogger(__name__)

_aiohttp_handle_error = web.RequestHandler.handle_error


def _handle_error(
    self: web.RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """A parser error: one INFO line naming its class and a fixed 400 (or 415) problem body.

    INFO, not WARNING or ERROR: the client sent bad bytes and there is nothing for the
    operator to fix, like any other 4xx, which gets its INFO access line; and so
    ``LOCKSTEP_LOG_LEVEL=warning`` silences these with the access lines. Neither the line
    nor the body carries the exception's message, which quotes what the client sent.
    """
    if not isinstance(exc, HttpProcessingError):
        return _aiohttp_handle_error(self, request, status, exc, message)
    error: LockstepError
    if isinstance(exc, ContentEncodingError):
        error = UnsupportedEncoding("; the connection is closed")
    else:
        error = MalformedRequest(
            "the request is not valid HTTP/1.1 or one of its lines is longer than the parser"
            " accepts; the connection is closed"
        )
    logger.info(
        "refused by the HTTP parser",
        extra={"status": error.status, "error": type(exc).__name__, "remote": request.remote},
    )
    response = problem_response(error.status, error.title, error.detail, error.slug, error.headers)
    response.force_close()
    return response


def answer_parser_errors() -> None:
    """Make every aiohttp server in this process answer parser errors as above."""
    web.RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
