"""Counter handlers: GET /access and the /counters endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from app.combining import Combiner
from app.domain import CounterOp, CounterOutcome, DeleteCounter, Increment, SetValue
from app.errors import InvalidInput, NotFound
from app.idempotency import Rendered
from app.settings import SETTINGS
from app.storage import STORAGE
from app.views.bodies import Counter, CounterPage, IncrementBody, SetBody
from app.views.common import (
    JSON,
    NO_STORE,
    _encode,
    decode_json,
    json_response,
    list_params,
    page,
    path_name,
    raise_if_error,
    read_body,
)
from app.views.idempotent import KEY_HEADER, claim_for, execute

# The write combiner every counter change goes through.
COUNTERS = web.AppKey("counters", Combiner[CounterOp, CounterOutcome])

ACCESS = "access"
ENCODING = "Content-Encoding"
_ONE = Increment(1)
_ACCESS_TEXT = {"Content-Type": "text/plain; charset=utf-8", **NO_STORE}
_JSON_ONLY = {"Content-Type": JSON}


def wants_json(accept: str) -> bool:
    """Whether ``Accept`` prefers JSON to plain text (RFC 9110 weights; ties go to JSON).

    Each media range's weight is its ``q`` (1 when absent); a type is weighted by the most
    specific range that matches it (``application/json`` over ``application/*`` over
    ``*/*``), and ``q=0`` means "not acceptable". Without "json" in the header at all, the
    answer is text at once: the classic hit counter's fast path.
    """
    if "json" not in accept:
        return False
    weights: dict[str, float] = {}
    for media_range in accept.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights.setdefault(kind.lower(), q)

    def weight(media_type: str) -> float:
        major = media_type.split("/")[0]
        for candidate in (media_type, f"{major}/*", "*/*"):
            if candidate in weights:
                return weights[candidate]
        return 0.0

    json_q = weight("application/json")
    return json_q > 0 and json_q >= weight("text/plain")


async def access(request: web.Request) -> web.Response:
    """Count one access and say how many there have been, this one included."""
    value = raise_if_error(await request.app[COUNTERS].submit(ACCESS, _ONE))
    assert isinstance(value, int)
    if wants_json(request.headers.get("Accept", "")):
        return json_response(Counter(ACCESS, value), headers=NO_STORE)
    # The finished header set, so aiohttp need not build the content type each time.
    return web.Response(body=b"Resource accessed %d times." % value, headers=_ACCESS_TEXT)


def _render_value(name: str) -> Callable[[Any], Rendered]:
    def render(value: Any) -> Rendered:
        return Rendered(200, {"Content-Type": JSON}, _encode(Counter(name, value)))

    return render


def _render_deleted(_: Any) -> Rendered:
    return Rendered(204, {}, b"")


async def increment(request: web.Request) -> web.Response:
    """Add ``by`` (default 1) to a counter, creating it at 0 first if needed."""
    name = path_name(request, "name")
    headers = request.headers
    if not request.body_exists and KEY_HEADER not in headers and ENCODING not in headers:
        # The common call, ``POST`` with nothing but the URL: the same answer as below,
        # without the body read, the render closure and the JSON encoder. A checked name
        # holds no character JSON escapes, so it goes into the body as it is.
        value = raise_if_error(await request.app[COUNTERS].submit(name, _ONE))
        assert isinstance(value, int)
        answer = b'{"name":"%s","value":%d}' % (name.encode(), value)
        return web.Response(body=answer, headers=_JSON_ONLY)
    raw = await read_body(request)
    body = (
        decode_json(raw, IncrementBody, request.app[SETTINGS].max_json_depth)
        if raw.strip()
        else None
    )
    by = 1 if body is None else body.by
    render = _render_value(name)
    claim = claim_for(request, raw, render)
    op = _ONE if by == 1 and claim is None else Increment(by, claim)
    return await execute(request, request.app[COUNTERS], name, op, render)


async def get_counter(request: web.Request) -> web.Response:
    """A counter's committed value."""
    name = path_name(request, "name")
    value = await request.app[STORAGE].get_counter(name)
    if value is None:
        raise NotFound(f"no counter named {name!r}")
    return json_response(Counter(name, value))


async def set_counter(request: web.Request) -> web.Response:
    """Set a counter to a value, creating it if needed."""
    name = path_name(request, "name")
    raw = await read_body(request)
    if not raw.strip():
        raise InvalidInput("a JSON body is required")
    body = decode_json(raw, SetBody, request.app[SETTINGS].max_json_depth)
    render = _render_value(name)
    op = SetValue(body.value, claim_for(request, raw, render))
    return await execute(request, request.app[COUNTERS], name, op, render)


async def delete_counter(request: web.Request) -> web.Response:
    """Delete a counter."""
    name = path_name(request, "name")
    op = DeleteCounter(claim_for(request, await read_body(request), _render_deleted))
    return await execute(request, request.app[COUNTERS], name, op, _render_deleted)


async def list_counters(request: web.Request) -> web.Response:
    """Counters ordered by name, a page at a time."""
    prefix, after, limit = list_params(request)
    rows = await request.app[STORAGE].list_counters(prefix, after, limit + 1)
    shown, after_last = page(rows, limit, lambda row: row[0])
    return json_response(CounterPage([Counter(n, v) for n, v in shown], after_last))
