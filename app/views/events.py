"""Server-Sent Event streams of the change feed: one resource, several, or the whole feed.

Every event is one commit (``event: change``, ``id:`` its revision, the commit's entries for
what the stream watches), so the last id a client received is an exact resume point:
``Last-Event-ID`` (sent by EventSource when it reconnects) or ``?since=`` picks up right
after it. Without one, a stream starts with ``event: snapshot`` (several, the last with the
id, for a large part of the feed: ``app.snapshots``); with one older than the log's
retention, with ``event: reset`` and then a snapshot (``app.events``).
"""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from app.auth import TOKENS, still_authorized
from app.domain import check_name
from app.errors import InvalidInput
from app.events import EVENTS, Watch
from app.logs import REQUEST_ID_HEADER
from app.metrics import METRICS
from app.middleware import REQUEST_ID
from app.settings import SETTINGS
from app.snapshots import Event
from app.storage import Storage
from app.views.backpressure import PIECE_BYTES, send
from app.views.changes import feed_filter, revision_param
from app.views.common import path_name

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
# The last event of a stream whose token no longer covers it; data: {"status", "detail"}.
_UNAUTHORIZED = b"event: unauthorized\ndata: "
_encode = msgspec.json.Encoder().encode


class ValueGone(ConnectionError):
    """A deferred value is no longer in the log: the stream ends, and its client resumes."""


async def send_event(
    request: web.Request,
    response: web.StreamResponse,
    storage: Storage,
    event: Event,
    send_timeout: float,
) -> None:
    """Write one SSE event, a piece at a time: a commit or snapshot with its revision as id.

    A large value (``Change.deferred``) is read just before it is written, so the stream
    holds one at a time. An event cut short is dropped by the client (an event counts once
    its blank line arrives), so ending the stream midway loses nothing.
    """
    if event.kind == "reset":
        data = _encode({"oldest": event.oldest})
        await send(request, response, b"event: reset\ndata: " + data + b"\n\n", send_timeout)
        return
    if event.more:
        # A snapshot page with more to come: no id, so no resume point inside a snapshot.
        piece = b'event: snapshot\ndata: {"revision":%d,"more":true,"changes":[' % event.revision
    else:
        piece = b'event: %s\nid: %d\ndata: {"revision":%d,"changes":[' % (
            event.kind.encode(),
            event.revision,
            event.revision,
        )
    for n, change in enumerate(event.changes):
        if change.deferred:
            value = await storage.deferred_value(change, snapshot=event.kind == "snapshot")
            if value is None:
                raise ValueGone(f"revision {change.revision} of {change.key!r} left the log")
            change = change._replace(value=value, deferred=False)
        piece += (b"," if n else b"") + _encode(change.to_json())
        if len(piece) >= PIECE_BYTES:
            await send(request, response, piece, send_timeout)
            piece = b""
    await send(request, response, piece + b"]}\n\n", send_timeout)


def resume_point(request: web.Request) -> int | None:
    """Where the stream resumes: ``Last-Event-ID`` first, then ``?since=``; None for neither."""
    last_id = request.headers.get(LAST_EVENT_ID)
    if last_id is not None and last_id.strip():
        return revision_param(last_id.strip(), LAST_EVENT_ID)
    since = request.query.get("since")
    return None if since is None else revision_param(since, "since")


async def stream(request: web.Request, watch: Watch) -> web.StreamResponse:
    """Catch up as asked, then send every commit touching ``watch`` until either side leaves."""
    since = resume_point(request)
    hub = request.app[EVENTS]
    settings = request.app[SETTINGS]
    heartbeat = settings.events_heartbeat
    response = web.StreamResponse(
        headers={
            "Content-Type": EVENT_STREAM,
            "Cache-Control": "no-store",
            # Reverse proxies must pass events through as they come, not buffer them.
            "X-Accel-Buffering": "no",
            # Set here: the middleware only adds it to answers not yet started.
            REQUEST_ID_HEADER: request[REQUEST_ID],
        }
    )
    if request.method == "HEAD":
        # Headers only: a HEAD must not hold a subscription and a connection open forever.
        await response.prepare(request)
        return response
    sub = await hub.subscribe(watch, since)
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
            events = await sub.next(max(0.0, min(wait, check_every) if tokens else wait))
            if events is None:
                await response.write(b"event: shutdown\ndata: {}\n\n")
                break
            refused = still_authorized(request, tokens) if tokens is not None else None
            if refused is not None:
                status, detail = refused
                data = _encode({"status": status, "detail": detail})
                await send(request, response, _UNAUTHORIZED + data + b"\n\n", settings.send_timeout)
                break
            if not events:
                if time.monotonic() >= quiet_until:
                    await send(request, response, b": keep-alive\n\n", settings.send_timeout)
                    quiet_until = time.monotonic() + heartbeat
                continue
            # In pieces: a slow reader holds back only its own stream, with at most one
            # piece queued (app.views.backpressure); meanwhile its subscription reads from
            # the log instead of holding commits, and one that reads nothing for the send
            # timeout is closed.
            for event in events:
                await send_event(request, response, hub.storage, event, settings.send_timeout)
            quiet_until = time.monotonic() + heartbeat
        return response
    except ConnectionError:
        # The client went away or stopped reading; there is nobody left to answer.
        return response
    finally:
        gauge.dec()
        hub.unsubscribe(sub)


async def counter_events(request: web.Request) -> web.StreamResponse:
    """Stream every committed change of a counter."""
    resource = ("counter", path_name(request, "name"))
    return await stream(request, Watch(frozenset({resource})))


async def record_events(request: web.Request) -> web.StreamResponse:
    """Stream every committed change of a record."""
    resource = ("item", path_name(request, "id"))
    return await stream(request, Watch(frozenset({resource})))


async def events(request: web.Request) -> web.StreamResponse:
    """Stream several resources at once: ``?counter=a&counter=b&item=c`` (one connection)."""
    limit = request.app[SETTINGS].events_max_resources
    counters = request.query.getall("counter", [])
    items = request.query.getall("item", [])
    if not counters and not items:
        raise InvalidInput("name at least one counter=<name> or item=<id> to watch")
    if len(counters) + len(items) > limit:
        raise InvalidInput(f"one stream watches at most {limit} resources")
    resources = frozenset(
        [("counter", check_name(n, "counter")) for n in counters]
        + [("item", check_name(i, "item")) for i in items]
    )
    return await stream(request, Watch(resources))


async def feed_events(request: web.Request) -> web.StreamResponse:
    """Stream the whole change feed, or the part ``kind`` and ``prefix`` select."""
    kind, prefix = feed_filter(request)
    return await stream(request, Watch(None, kind, prefix))
