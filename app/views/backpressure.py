"""Writing long answers to clients that may not read them: bounded, with a deadline.

An answer built whole is queued whole on the transport, however slowly its client reads.
Event streams and large listings are written here instead, in pieces: aiohttp's
``write`` waits for the transport to drain once 64 KiB were written since it last did,
so a client that stops reading holds at most 64 KiB plus one piece (an event, or about
``PIECE_BYTES`` of a listing) beyond the kernel's socket buffer. aiohttp would wait for
that drain forever; here a client that has not taken a piece within
``LOCKSTEP_SEND_TIMEOUT`` seconds has its connection aborted, dropping what was queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from app.errors import LockstepError

T = TypeVar("T")
JSON = "application/json"
_encode = msgspec.json.Encoder().encode

logger = logging.getLogger(__name__)

# A listing is read from the database and written in pieces of about this many bytes.
PIECE_BYTES = 256 * 1024


class ClientTooSlow(ConnectionResetError):
    """The client did not read what was sent within the send timeout; the connection is gone."""


async def send(
    request: web.Request, response: web.StreamResponse, data: bytes, send_timeout: float
) -> None:
    """Write ``data`` (waiting for the transport to drain as aiohttp does), or give up.

    Raises ``ClientTooSlow`` (a ``ConnectionError``) when the client did not take it within
    ``send_timeout`` seconds; the connection is aborted then.
    """
    try:
        async with asyncio.timeout(send_timeout):
            await response.write(data)
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            transport.abort()  # close() would keep the queued bytes until they drain
        logger.info(
            "closed %s %s: the client read nothing for %g s",
            request.method,
            request.rel_url.raw_path[:256],
            send_timeout,
        )
        raise ClientTooSlow("the client stopped reading") from None


async def list_in_pieces(
    request: web.Request,
    fetch: Callable[[str, int], Awaitable[list[T]]],
    after: str,
    limit: int,
    body: Callable[[T], Any],
    cursor: Callable[[T], str],
    send_timeout: float,
) -> web.StreamResponse:
    """A list page (``{"items": [...], "next": ...}``) read and written a piece at a time.

    ``fetch(after, n)`` returns up to ``n`` entries sorting after ``after``. The first read
    takes one entry; later reads take as many as fit in ``PIECE_BYTES`` at the sizes seen so
    far. A page that fits in one piece is answered as usual (with a Content-Length); a
    larger one is sent chunked as it is read, so neither a large page nor a client that
    does not read it holds more than about a piece of memory. The answer is the same bytes
    either way; a storage error after the first piece was sent aborts the connection.
    """
    parts: list[bytes] = []
    buffered = 0
    response: web.StreamResponse | None = None
    shown = 0
    last = after
    rows = 1
    more = False
    try:
        while True:
            want = min(rows, limit + 1 - shown)
            entries = await fetch(last, want)
            if shown + len(entries) > limit:  # the one past the page only says there is more
                more = True
                entries = entries[: limit - shown]
            encoded = [_encode(body(e)) for e in entries]
            if entries:
                last = cursor(entries[-1])
                shown += len(entries)
                size = sum(map(len, encoded))
                rows = max(1, PIECE_BYTES * len(entries) // max(size, 1))
                parts.extend(encoded)
                buffered += size
            if more or len(entries) < want:
                break
            if buffered >= PIECE_BYTES:
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": JSON})
                    response.enable_chunked_encoding()
                    await response.prepare(request)
                    head = b'{"items":['
                else:
                    head = b","
                await send(request, response, head + b",".join(parts), send_timeout)
                parts.clear()
                buffered = 0
    except LockstepError:
        if response is None:
            raise
        logger.warning("listing aborted after its first piece was sent", exc_info=True)
        if request.transport is not None:
            request.transport.abort()
        return response
    except ConnectionError:
        if response is None:
            raise
        return response
    tail = b'],"next":' + _encode(last if more else None) + b"}"
    if response is None:
        return web.Response(body=b'{"items":[' + b",".join(parts) + tail, content_type=JSON)
    try:
        rest = (b"," if parts else b"") + b",".join(parts) + tail
        await send(request, response, rest, send_timeout)
        await response.write_eof()
    except ConnectionError:
        pass
    return response
