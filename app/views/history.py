"""A record's history from the change log: GET /items/{id}/versions and /versions/{v}."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from app.changes import Change
from app.errors import InvalidInput, NotFound
from app.settings import SETTINGS
from app.storage import STORAGE
from app.views.changes import revision_param
from app.views.common import json_response, path_name

_NEWEST = 2**63 - 1


def _version_body(change: Change) -> dict[str, Any]:
    return {
        "id": change.key,
        "value": msgspec.Raw(change.value or "null"),
        "version": change.version,
        "updated_at": change.time,
        "revision": change.revision,
    }


async def record_versions(request: web.Request) -> web.Response:
    """The record's retained versions, newest first; ``before`` (a revision) pages on."""
    record_id = path_name(request, "id")
    query = request.query
    before = revision_param(query["before"], "before") if "before" in query else _NEWEST
    limit_max = request.app[SETTINGS].list_limit_max
    raw = query.get("limit", "100")
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 0
    if not 1 <= limit <= limit_max:
        raise InvalidInput(f"limit must be an integer from 1 to {limit_max}")
    versions = await request.app[STORAGE].record_versions(record_id, before, limit + 1)
    shown = versions[:limit]
    following = shown[-1].revision if len(versions) > limit else None
    return json_response({"items": [_version_body(c) for c in shown], "next": following})


async def record_version_view(request: web.Request) -> web.Response:
    """One retained version of the record (the newest with that number)."""
    record_id = path_name(request, "id")
    raw = request.match_info["version"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) >= 1):
        raise InvalidInput("version must be an integer from 1")
    found = await request.app[STORAGE].record_versions(record_id, _NEWEST, 1, int(raw))
    if not found:
        raise NotFound(
            f"record {record_id!r} has no version {raw} in the change log"
            " (never written, or older than LOCKSTEP_CHANGES_RETENTION)"
        )
    [change] = found
    return json_response(_version_body(change), headers={"ETag": f'"{change.version}"'})
