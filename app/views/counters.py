"""Counter handlers: GET /access and the /counters endpoints."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.combining import Combiner
from app.domain import (
    Counted,
    CounterOp,
    CounterOutcome,
    DeleteCounter,
    Deleted,
    Increment,
    SetValue,
)
from app.domain import Counter as StoredCounter
from app.errors import InvalidInput, NotFound
from app.idempotency import Rendered
from app.settings import SETTINGS
from app.storage import STORAGE
from app.views.bodies import Counter, CounterPage, IncrementBody, SetBody
from app.views.common import (
    JSON,
    NO_STORE,
    REVISION_HEADER,
    _encode,
    conditions,
    decode_json,
    json_response,
    list_params,
    page,
    path_name,
    raise_if_error,
    read_body,
)
from app.views.fences import FENCE_HEADER, fenced, fences_of
from app.views.idempotent import KEY_HEADER, claim_for, execute, response_for

# The write combiner every counter change goes through.
COUNTER_WRITES = web.AppKey("counter_writes", Combiner[CounterOp, CounterOutcome])

ACCESS = "access"
_ONE = Increment(1)
_TEXT = "text/plain; charset=utf-8"
# A request with any of these is more than a bare +1 (a body to decode, a claim, conditions,
# fences): it takes the general path.
_NOT_BARE = ("Content-Encoding", KEY_HEADER, "If-Match", "If-None-Match", FENCE_HEADER)


def counter_body(counter: StoredCounter) -> Counter:
    return Counter(counter.name, counter.value, counter.version)


def counted_headers(counted: Counted) -> dict[str, str]:
    """The ETag of the counter's new version and the revision that committed it."""
    return {
        "Content-Type": JSON,
        "ETag": f'"{counted.counter.version}"',
        REVISION_HEADER: str(counted.revision),
    }


def wants_json(accept: str) -> bool:
    """Whether ``Accept`` prefers JSON to plain text (RFC 9110 weights; ties go to JSON).

    Each media range's weight is its ``q`` (1 when absent); a type is weighted by the most
    specific range that matches it (``application/json`` over ``application/*`` over
    ``*/*``), and ``q=0`` means "not acceptable". JSON must be asked for by name: without
    "json" in the header (``*/*``, ``application/*``) the answer is the classic text.
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
    """Count one access and say how many there have been, this one included; with
    ``Lockstep-Fence`` only while its leases are held."""
    fences = fences_of(request)
    if fences:
        _, run = fenced(request, ACCESS, _ONE, fences)
        counted = raise_if_error(await run())
    else:
        counted = raise_if_error(await request.app[COUNTER_WRITES].submit(ACCESS, _ONE))
    assert isinstance(counted, Counted)
    headers = counted_headers(counted)
    headers.update(NO_STORE)
    if wants_json(request.headers.get("Accept", "")):
        return web.Response(body=_encode(counter_body(counted.counter)), headers=headers)
    headers["Content-Type"] = _TEXT
    body = b"Resource accessed %d times." % counted.counter.value
    return web.Response(body=body, headers=headers)


def _render_counted(counted: Any) -> Rendered:
    assert isinstance(counted, Counted)
    return Rendered(200, counted_headers(counted), _encode(counter_body(counted.counter)))


def _render_deleted(deleted: Any) -> Rendered:
    assert isinstance(deleted, Deleted)
    return Rendered(204, {REVISION_HEADER: str(deleted.revision)}, b"")


def is_bare(request: web.Request) -> bool:
    """Whether a write is a bare +1: no body, and none of the headers that shape a write."""
    # The headers' key view compares names case-insensitively, as HTTP does.
    return not request.body_exists and request.headers.keys().isdisjoint(_NOT_BARE)


async def add_one(request: web.Request, name: str) -> web.Response:
    """A bare +1 answered as the general path answers it, without the body read, claim,
    conditions and fences it has no use for."""
    counted = raise_if_error(await request.app[COUNTER_WRITES].submit(name, _ONE))
    return response_for(_render_counted(counted))


async def increment(request: web.Request) -> web.Response:
    """Add ``by`` (default 1) to a counter, creating it at 0 first if needed."""
    name = path_name(request, "name")
    if is_bare(request):
        return await add_one(request, name)
    raw = await read_body(request)
    body = (
        decode_json(raw, IncrementBody, request.app[SETTINGS].max_json_depth)
        if raw.strip()
        else None
    )
    by = 1 if body is None else body.by
    op = Increment(by, claim_for(request, raw, _render_counted), conditions(request))
    return await execute(request, request.app[COUNTER_WRITES], name, op, _render_counted)


async def get_counter(request: web.Request) -> web.Response:
    """A counter's committed value."""
    name = path_name(request, "name")
    counter = await request.app[STORAGE].get_counter(name)
    if counter is None:
        raise NotFound(f"no counter named {name!r}")
    return json_response(counter_body(counter), headers={"ETag": f'"{counter.version}"'})


async def set_counter(request: web.Request) -> web.Response:
    """Set a counter to a value, creating it if needed."""
    name = path_name(request, "name")
    raw = await read_body(request)
    if not raw.strip():
        raise InvalidInput("a JSON body is required")
    body = decode_json(raw, SetBody, request.app[SETTINGS].max_json_depth)
    op = SetValue(body.value, claim_for(request, raw, _render_counted), conditions(request))
    return await execute(request, request.app[COUNTER_WRITES], name, op, _render_counted)


async def delete_counter(request: web.Request) -> web.Response:
    """Delete a counter."""
    name = path_name(request, "name")
    claim = claim_for(request, await read_body(request), _render_deleted)
    op = DeleteCounter(claim, conditions(request))
    return await execute(request, request.app[COUNTER_WRITES], name, op, _render_deleted)


async def list_counters(request: web.Request) -> web.Response:
    """Counters ordered by name, a page at a time."""
    prefix, after, limit = list_params(request)
    rows = await request.app[STORAGE].list_counters(prefix, after, limit + 1)
    shown, after_last = page(rows, limit, lambda row: row.name)
    return json_response(CounterPage([counter_body(c) for c in shown], after_last))
