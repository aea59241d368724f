"""GET /changes: the change log after a revision, a page at a time, optionally long-polled."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from app.changes import KINDS, FeedPage
from app.domain import check_name
from app.errors import ChangesPurged, InvalidInput
from app.events import EVENTS
from app.settings import SETTINGS
from app.storage import STORAGE
from app.views.common import json_response

_REVISION_DIGITS = 19


def revision_param(text: str, what: str) -> int:
    """A revision from a query parameter or header: 0 to 2**63 - 1 in ASCII digits."""
    if not (text.isascii() and text.isdigit() and len(text) <= _REVISION_DIGITS):
        raise InvalidInput(f"{what} must be a revision: an integer from 0")
    value = int(text)
    if value > 2**63 - 1:
        raise InvalidInput(f"{what} must be a revision: an integer from 0 to 2**63 - 1")
    return value


def feed_filter(request: web.Request) -> tuple[str | None, str]:
    """``kind`` (counter or item) and ``prefix`` query parameters, validated."""
    kind = request.query.get("kind")
    if kind is not None and kind not in KINDS:
        raise InvalidInput("kind must be counter, item or lock")
    prefix = request.query.get("prefix", "")
    if prefix:
        check_name(prefix, "prefix")
    return kind, prefix


def _wait_param(request: web.Request) -> float:
    most = request.app[SETTINGS].changes_max_wait
    raw = request.query.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= most:  # also refuses nan
        raise InvalidInput(f"wait must be a number of seconds from 0 to {most:g}")
    return wait


def _limit_param(request: web.Request) -> int:
    limit_max = request.app[SETTINGS].list_limit_max
    raw = request.query.get("limit", "100")
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 0
    if not 1 <= limit <= limit_max:
        raise InvalidInput(f"limit must be an integer from 1 to {limit_max}")
    return limit


def page_body(page: FeedPage, since: int, limit: int) -> dict[str, Any]:
    """The answer: the entries, where to go on from, and the oldest revision still kept.

    A short page holds every matching entry up to the snapshot's revision, so ``next`` may
    skip past commits the filter left out; a full one goes on from its last commit.
    """
    if len(page.changes) >= limit:
        following = page.changes[-1].revision
    else:
        following = max(since, page.revision)
    return {
        "changes": [c.to_json() for c in page.changes],
        "next": following,
        "oldest": page.purged_through + 1,
    }


async def changes(request: web.Request) -> web.Response:
    """Entries after ``since`` in revision order; 410 once the log no longer reaches back there."""
    query = request.query
    since = revision_param(query.get("since", "0"), "since")
    limit = _limit_param(request)
    kind, prefix = feed_filter(request)
    wait = _wait_param(request)
    storage, hub = request.app[STORAGE], request.app[EVENTS]
    deadline = time.monotonic() + wait
    while True:
        page = await storage.read_changes(since, limit, kind, prefix)
        if since < page.purged_through:
            raise ChangesPurged(since, page.purged_through + 1)
        remaining = deadline - time.monotonic()
        if page.changes or remaining <= 0 or hub.closed:
            return json_response(page_body(page, since, limit))
        # Nothing yet: wait for this worker to read a commit after the one this page saw.
        await hub.wait_past(max(since, page.revision), remaining)
