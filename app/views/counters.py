"""Counter handlers: GET /access and the /counters endpoints."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from app.domain import INT64_MAX, INT64_MIN, DeleteCounter, Increment, SetValue
from app.errors import NotFound
from app.state import get_counters, get_storage
from app.views.common import (
    NO_STORE,
    json_response,
    list_params,
    page,
    path_name,
    raise_if_error,
    read_json,
)

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]


class IncrementBody(msgspec.Struct, forbid_unknown_fields=True):
    by: Int64 = 1


class SetBody(msgspec.Struct, forbid_unknown_fields=True):
    value: Int64


ACCESS = "access"
_ONE = Increment(1)


async def access(request: web.Request) -> web.Response:
    """Count one access and say how many there have been, this one included."""
    value = raise_if_error(await get_counters(request).submit(ACCESS, _ONE))
    assert value is not None
    if "application/json" in request.headers.get("Accept", ""):
        return json_response({"name": ACCESS, "value": value}, headers=NO_STORE)
    return web.Response(text=f"Resource accessed {value} times.", headers=NO_STORE)


async def increment(request: web.Request) -> web.Response:
    """Add ``by`` (default 1) to a counter, creating it at 0 first if needed."""
    name = path_name(request, "name")
    body = await read_json(request, IncrementBody, optional=True)
    op = _ONE if body is None or body.by == 1 else Increment(body.by)
    value = raise_if_error(await get_counters(request).submit(name, op))
    return json_response({"name": name, "value": value})


async def get_counter(request: web.Request) -> web.Response:
    """A counter's committed value."""
    name = path_name(request, "name")
    value = await get_storage(request).get_counter(name)
    if value is None:
        raise NotFound(f"no counter named {name!r}")
    return json_response({"name": name, "value": value})


async def set_counter(request: web.Request) -> web.Response:
    """Set a counter to a value, creating it if needed."""
    name = path_name(request, "name")
    body = await read_json(request, SetBody)
    assert body is not None
    value = raise_if_error(await get_counters(request).submit(name, SetValue(body.value)))
    return json_response({"name": name, "value": value})


async def delete_counter(request: web.Request) -> web.Response:
    """Delete a counter."""
    name = path_name(request, "name")
    raise_if_error(await get_counters(request).submit(name, DeleteCounter()))
    return web.Response(status=204)


async def list_counters(request: web.Request) -> web.Response:
    """Counters ordered by name, a page at a time."""
    prefix, after, limit = list_params(request)
    rows = await get_storage(request).list_counters(prefix, after, limit + 1)
    return json_response(page([{"name": n, "value": v} for n, v in rows], limit, "name"))
