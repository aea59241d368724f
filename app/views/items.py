"""Record handlers: the /items endpoints, with ETags and conditional requests."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from app.domain import DeleteItem, PatchItem, PutItem, Record, Written
from app.errors import LockstepError, NotFound
from app.state import get_items, get_storage
from app.views.common import (
    json_response,
    list_params,
    page,
    path_name,
    precondition,
    raise_if_error,
    read_json,
)

MERGE_PATCH = "application/merge-patch+json"


class PutBody(msgspec.Struct, forbid_unknown_fields=True):
    value: Any


def record_body(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "value": record.value,
        "version": record.version,
        "updated_at": record.updated_at,
    }


def record_response(record: Record, status: int = 200) -> web.Response:
    return json_response(record_body(record), status, {"ETag": f'"{record.version}"'})


def _written(outcome: Written | LockstepError | None) -> Written:
    result = raise_if_error(outcome)
    assert result is not None
    return result


async def put_item(request: web.Request) -> web.Response:
    """Create or replace a record; 201 when created."""
    item_id = path_name(request, "id")
    body = await read_json(request, PutBody)
    assert body is not None
    op = PutItem(body.value, precondition(request))
    written = _written(await get_items(request).submit(item_id, op))
    return record_response(written.record, 201 if written.created else 200)


async def patch_item(request: web.Request) -> web.Response:
    """Apply an RFC 7396 JSON Merge Patch to a record's value."""
    item_id = path_name(request, "id")
    if request.content_type != MERGE_PATCH:
        raise web.HTTPUnsupportedMediaType(text=f"PATCH takes Content-Type: {MERGE_PATCH}")
    # An empty body is "a JSON body is required" (422), as on PUT, not a JSON syntax error.
    patch = await read_json(request, Any)
    op = PatchItem(patch, precondition(request))
    written = _written(await get_items(request).submit(item_id, op))
    return record_response(written.record)


async def delete_item(request: web.Request) -> web.Response:
    """Delete a record."""
    item_id = path_name(request, "id")
    raise_if_error(await get_items(request).submit(item_id, DeleteItem(precondition(request))))
    return web.Response(status=204)


async def get_item(request: web.Request) -> web.Response:
    """A record as committed, with its ETag."""
    item_id = path_name(request, "id")
    record = await get_storage(request).get_item(item_id)
    if record is None:
        raise NotFound(f"no record with id {item_id!r}")
    return record_response(record)


async def list_items(request: web.Request) -> web.Response:
    """Records ordered by id, a page at a time."""
    prefix, after, limit = list_params(request)
    records = await get_storage(request).list_items(prefix, after, limit + 1)
    return json_response(page([record_body(r) for r in records], limit, "id"))
