"""Server-Sent Event streams of committed changes: one resource, or several at once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
from aiohttp import web

from app.auth import TOKENS, still_authorized
from app.domain import check_name
from app.envelope import REQUEST_ID
from app.errors import InvalidInput
from app.events import EVENTS, Change, Resource
from app.logs import REQUEST_ID_HEADER
from app.metrics import METRICS
from app.settings import SETTINGS
from app.views.backpressure import PIECE_BYTES, send
from app.views.common import path_name

EVENT_STREAM = "text/event-stream"
# The last event of a stream whose token no longer covers it; data: {"status", "detail"}.
_UNAUTHORIZED = b"event: unauthorized\ndata: "
_encode = msgspec.json.Encoder().encode


def _iso(seen: float) -> str:
    millis = int(seen * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seen)) + f".{millis:03d}Z"


def encode_change(change: Change) -> bytes:
    """One SSE event: ``event: counter|item`` and the state as JSON with the time it was seen."""
    resource, state, seen = change
    data = _encode({**state, "time": _iso(seen)})
    return b"event: " + resource.kind.encode() + b"\ndata: " + data + b"\n\n"


def pieces(changes: list[Change]) -> Iterator[bytes]:
    """The events of ``changes`` joined into pieces of about ``PIECE_BYTES`` (a keep-alive
    comment when there are none)."""
    if not changes:
        yield b": keep-alive\n\n"
    piece: list[bytes] = []
    size = 0
    for change in changes:
        event = encode_change(change)
        piece.append(event)
        size += len(event)
        if size >= PIECE_BYTES:
            yield b"".join(piece)
            piece.clear()
            size = 0
    if piece:
        yield b"".join(piece)


async def stream(request: web.Request, resources: tuple[Resource, ...]) -> web.StreamResponse:
    """Send the resources' current states, then every change, until the client or server leaves."""
    hub = request.app[EVENTS]
    settings = request.app[SETTINGS]
    heartbeat = settings.events_heartbeat
    response = web.StreamResponse(
        headers={
            "Content-Type": EVENT_STREAM,
            "Cache-Control": "no-store",
            # Reverse proxies must pass events through as they come, not buffer them.
            "X-Accel-Buffering": "no",
            # Set here: the envelope only adds it to answers not yet started.
            REQUEST_ID_HEADER: request[REQUEST_ID],
        }
    )
    if request.method == "HEAD":
        # Headers only: a HEAD must not hold a subscription and a connection open forever.
        await response.prepare(request)
        return response
    sub = await hub.subscribe(resources)
    gauge = request.app[METRICS].event_streams
    gauge.inc()
    try:
        await response.prepare(request)
        # Browsers reconnect after this many ms when the stream ends (e.g. a restart).
        await response.write(b"retry: 2000\n\n")
        # With tokens on, the stream's token is checked again at least this often, and ends
        # the stream once it no longer covers it (revoked, or the tokens file unusable).
        tokens = request.app.get(TOKENS)
        check_every = max(settings.tokens_check_interval, settings.events_poll_interval)
        quiet_until = time.monotonic() + heartbeat
        while True:
            wait = quiet_until - time.monotonic()
            changes = await sub.next(max(0.0, min(wait, check_every) if tokens else wait))
            if changes is None:
                await response.write(b"event: shutdown\ndata: {}\n\n")
                break
            refused = still_authorized(request, tokens) if tokens is not None else None
            if refused is not None:
                status, detail = refused
                data = _encode({"status": status, "detail": detail})
                await send(request, response, _UNAUTHORIZED + data + b"\n\n", settings.send_timeout)
                break
            if not changes and time.monotonic() < quiet_until:
                continue
            # In pieces: a slow reader holds back only its own stream, with at most one
            # piece queued (app.views.backpressure); meanwhile its pending states are
            # overwritten, and one that reads nothing for the send timeout is closed.
            for piece in pieces(changes):
                await send(request, response, piece, settings.send_timeout)
            quiet_until = time.monotonic() + heartbeat
        return response
    except ConnectionError:
        # The client went away or stopped reading; there is nobody left to answer.
        return response
    finally:
        gauge.dec()
        hub.unsubscribe(sub)


async def counter_events(request: web.Request) -> web.StreamResponse:
    """Stream a counter's value on every committed change."""
    return await stream(request, (Resource("counter", path_name(request, "name")),))


async def item_events(request: web.Request) -> web.StreamResponse:
    """Stream a record on every committed change."""
    return await stream(request, (Resource("item", path_name(request, "id")),))


async def events(request: web.Request) -> web.StreamResponse:
    """Stream several resources at once: ``?counter=a&counter=b&item=c`` (one connection)."""
    limit = request.app[SETTINGS].events_max_resources
    counters = request.query.getall("counter", [])
    items = request.query.getall("item", [])
    if not counters and not items:
        raise InvalidInput("name at least one counter=<name> or item=<id> to watch")
    if len(counters) + len(items) > limit:
        raise InvalidInput(f"one stream watches at most {limit} resources")
    resources = tuple(
        dict.fromkeys(
            [Resource("counter", check_name(n, "counter")) for n in counters]
            + [Resource("item", check_name(i, "item")) for i in items]
        )
    )
    return await stream(request, resources)
