"""Record handlers: the /items endpoints, with ETags and conditional requests."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.combining import Combiner
from app.domain import (
    Deleted,
    DeleteRecord,
    PatchRecord,
    PutRecord,
    Record,
    RecordOp,
    RecordOutcome,
    Written,
    check_record_size,
)
from app.errors import InvalidInput, NotFound, UnsupportedMediaType
from app.idempotency import Rendered
from app.settings import SETTINGS
from app.storage import STORAGE
from app.views import bodies
from app.views.backpressure import list_in_pieces
from app.views.bodies import PutBody
from app.views.common import (
    JSON,
    REVISION_HEADER,
    _encode,
    decode_json,
    json_response,
    list_params,
    path_name,
    precondition,
    read_body,
)
from app.views.idempotent import claim_for, execute

# The write combiner every record change goes through.
RECORD_WRITES = web.AppKey("record_writes", Combiner[RecordOp, RecordOutcome])

MERGE_PATCH = "application/merge-patch+json"


def record_body(record: Record) -> bodies.Record:
    return bodies.Record(record.id, record.value, record.version, record.updated_at)


def record_response(record: Record, status: int = 200) -> web.Response:
    return json_response(record_body(record), status, {"ETag": f'"{record.version}"'})


def _render_written(written: Any) -> Rendered:
    assert isinstance(written, Written)
    record = written.record
    return Rendered(
        201 if written.created else 200,
        {
            "Content-Type": JSON,
            "ETag": f'"{record.version}"',
            REVISION_HEADER: str(written.revision),
        },
        _encode(record_body(record)),
    )


def _render_deleted(deleted: Any) -> Rendered:
    assert isinstance(deleted, Deleted)
    return Rendered(204, {REVISION_HEADER: str(deleted.revision)}, b"")


async def _required_body(request: web.Request) -> bytes:
    raw = await read_body(request)
    if not raw.strip():
        raise InvalidInput("a JSON body is required")
    return raw


async def put_record(request: web.Request) -> web.Response:
    """Create or replace a record; 201 when created."""
    record_id = path_name(request, "id")
    raw = await _required_body(request)
    settings = request.app[SETTINGS]
    # The depth limit is the stored value's: {"value": ...} adds a level that PATCH has not.
    body = decode_json(raw, PutBody, settings.max_json_depth, wrapper=1)
    if len(raw) > settings.record_limit:  # a smaller body cannot hold a larger record
        check_record_size(body.value, settings.record_limit)
    op = PutRecord(body.value, precondition(request), claim_for(request, raw, _render_written))
    return await execute(request, request.app[RECORD_WRITES], record_id, op, _render_written)


async def patch_record(request: web.Request) -> web.Response:
    """Apply an RFC 7396 JSON Merge Patch to a record's value."""
    record_id = path_name(request, "id")
    if request.content_type != MERGE_PATCH:
        raise UnsupportedMediaType(
            f"PATCH takes Content-Type: {MERGE_PATCH}", {"Accept-Patch": MERGE_PATCH}
        )
    # An empty body is "a JSON body is required" (422), as on PUT, not a JSON syntax error.
    raw = await _required_body(request)
    settings = request.app[SETTINGS]
    patch = decode_json(raw, Any, settings.max_json_depth)
    claim = claim_for(request, raw, _render_written)
    op = PatchRecord(patch, precondition(request), claim, settings.record_limit)
    return await execute(request, request.app[RECORD_WRITES], record_id, op, _render_written)


async def delete_record(request: web.Request) -> web.Response:
    """Delete a record."""
    record_id = path_name(request, "id")
    claim = claim_for(request, await read_body(request), _render_deleted)
    op = DeleteRecord(precondition(request), claim)
    return await execute(request, request.app[RECORD_WRITES], record_id, op, _render_deleted)


async def get_record(request: web.Request) -> web.Response:
    """A record as committed, with its ETag."""
    record_id = path_name(request, "id")
    record = await request.app[STORAGE].get_record(record_id)
    if record is None:
        raise NotFound(f"no record with id {record_id!r}")
    return record_response(record)


async def list_records(request: web.Request) -> web.StreamResponse:
    """Records ordered by id, a page at a time."""
    prefix, after, limit = list_params(request)
    storage = request.app[STORAGE]

    async def fetch(last: str, n: int) -> list[Record]:
        return await storage.list_records(prefix, last, n)

    # Records can be large: read and written a piece at a time (app.views.backpressure).
    timeout = request.app[SETTINGS].send_timeout
    return await list_in_pieces(request, fetch, after, limit, record_body, lambda r: r.id, timeout)
