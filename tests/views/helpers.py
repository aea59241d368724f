"""Assertions and shortcuts shared by the handler tests (tests/views, and the hostile-input
and middleware tests beside them)."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from app.domain import NAME_RULE, Record
from app.storage import STORAGE

Client = TestClient[Any, Any]

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
# Bad names and ids as they appear in a URL path, already percent-encoded.
BAD_NAMES = [
    "a" * 201,  # one character too long
    "a%20b",  # space
    "a%2Fb",  # percent-encoded slash
    "caf%C3%A9",  # valid UTF-8, outside the allowed set
    "a*b",
    "a%00b",  # NUL
    "%FF%FE",  # invalid UTF-8
    "%2E%2E",  # dot segment, encoded
]


def app_of(client: Client) -> web.Application:
    """The application behind a test client."""
    app: web.Application | None = client.app
    assert app is not None
    return app


async def assert_problem(
    response: ClientResponse, status: int, slug: str | None = None, detail: str = ""
) -> dict[str, Any]:
    """Assert an RFC 9457 problem answer: status, content type, members, and detail text."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    # A 500 also names its request id (the one in X-Request-ID and in the error's log line).
    members = {"type", "title", "status", "detail"} | ({"request_id"} if status == 500 else set())
    assert set(body) == members
    assert body["status"] == status
    assert body["type"] == (f"urn:lockstep:problem:{slug}" if slug else "about:blank")
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert detail in body["detail"]
    return body


async def assert_bad_name(response: ClientResponse) -> None:
    """Assert a 422 whose detail states the naming rule."""
    await assert_problem(response, 422, "invalid-input", NAME_RULE)


async def stored_counter(client: Client, name: str) -> int | None:
    """The counter's committed value, read straight from storage."""
    counter = await app_of(client)[STORAGE].get_counter(name)
    return None if counter is None else counter.value


async def stored_item(client: Client, record_id: str) -> Record | None:
    """The record as committed, read straight from storage."""
    return await app_of(client)[STORAGE].get_record(record_id)


async def count_counters(client: Client) -> int:
    """How many counters exist in storage."""
    return len(await app_of(client)[STORAGE].list_counters("", "", 10_000))


async def count_items(client: Client) -> int:
    """How many records exist in storage."""
    return len(await app_of(client)[STORAGE].list_records("", "", 10_000))
