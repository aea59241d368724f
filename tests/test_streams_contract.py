"""The streaming operations the fuzz run leaves out, checked against the document by hand.

tests/test_fuzz.py excludes operations tagged ``streams`` because a good answer never ends;
these tests give them the same checks: documented status, content type, headers and body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from openapi_schema_validator import OAS31Validator, oas31_format_checker

from app.events import EVENTS
from app.main import create_app
from app.openapi import openapi_document
from app.routes import EVENT_STREAM, STREAMS_TAG
from app.settings import Settings
from app.storage import STORAGE
from app.tokens import add_token
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.observability.helpers import next_event

DOC = openapi_document(Settings(data_dir=Path("unused")))
STREAMS = {
    path: item["get"]
    for path, item in DOC["paths"].items()
    if STREAMS_TAG in item.get("get", {}).get("tags", ())
}
# A valid request per streaming operation, and the events its first answer must hold.
# With since=0 a stream sends a reset (the log is purged first), then a snapshot, then a change.
VALID = {
    "/events": ("/events?counter=c&item=i&since=0", {"reset", "snapshot", "change"}),
    "/counters/{name}/events": ("/counters/c/events?since=0", {"reset", "snapshot", "change"}),
    "/items/{id}/events": ("/items/i/events?since=0", {"reset", "snapshot", "change"}),
    "/changes/events": ("/changes/events?since=0", {"reset", "snapshot", "change"}),
    "/locks/{name}/events": ("/locks/l/events?since=0", {"reset", "snapshot", "change"}),
}


def _schema(ref: dict[str, str]) -> dict[str, Any]:
    schema: dict[str, Any] = DOC["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]
    # With the document's components beside it, so the references it holds resolve.
    return {**schema, "components": DOC["components"]}


def test_streaming_operations_are_exactly_the_tagged_ones() -> None:
    """Every operation answering text/event-stream is tagged streams (so fuzzing skips it), and
    only those."""
    streaming = {
        (method, path)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if any(EVENT_STREAM in r.get("content", {}) for r in op["responses"].values())
    }
    tagged = {
        (method, path)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if STREAMS_TAG in op.get("tags", ())
    }
    assert streaming == tagged == {("get", p) for p in VALID}


@pytest.mark.parametrize("path", sorted(VALID))
async def test_stream_first_events_conform_to_document(
    client: TestClient[Any, Any], path: str
) -> None:
    """A stream answers 200 with the documented type and headers, and its first events'
    data validate against the documented event schemas, for present and absent resources."""
    ok = STREAMS[path]["responses"]["200"]
    events = ok["content"][EVENT_STREAM]["x-events"]
    for _ in range(2):
        assert (await client.post("/counters/c/increment")).status == 200
    assert await client.app[STORAGE].purge_changes("9999-01-01T00:00:00.000Z", 1) == 1
    url, expected = VALID[path]
    async with client.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == EVENT_STREAM
        assert resp.headers["Cache-Control"] == ok["headers"]["Cache-Control"]["schema"]["const"]
        seen: set[str] = set()
        for _ in expected:
            if len(seen) == 2:  # a change for every stream to send
                assert (await client.post("/counters/c/increment")).status == 200
                assert (await client.put("/items/i", json={"value": 1})).status == 201
                assert (await client.post("/locks/l", json={"ttl": 5})).status == 201
            event, data = await next_event(resp.content)
            validator = OAS31Validator(_schema(events[event]), format_checker=oas31_format_checker)
            assert list(validator.iter_errors(data)) == [], (event, data)
            seen.add(event)
    assert seen == expected == set(events)


@never_reaches_storage
@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/events", "/events"),
        ("/events", "/events?counter=.."),
        ("/events", "/events?item=" + "x" * 201),
        ("/events", "/events?" + "&".join(f"counter=c{i}" for i in range(101))),
        ("/counters/{name}/events", "/counters/" + "n" * 201 + "/events"),
        ("/counters/{name}/events", "/counters/a%20b/events"),
        ("/items/{id}/events", "/items/%2E%2E/events"),
        ("/items/{id}/events", "/items/caf%C3%A9/events"),
    ],
)
async def test_stream_bad_request_gets_documented_problem(
    client: TestClient[Any, Any], path: str, url: str
) -> None:
    """A stream request with a bad name or no resource gets a documented 422 problem, not a
    stream."""
    resp = await client.get(url)
    assert resp.status == 422
    assert str(resp.status) in STREAMS[path]["responses"]
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 422


async def test_stream_refusals_with_tokens_are_documented(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """With a tokens file, a stream without a token gets 401 and with a metrics token 403,
    both documented problems; a read token gets the stream."""
    tokens = tmp_path / "tokens.json"
    read, scraper = add_token(tokens, "r", "read"), add_token(tokens, "m", "metrics")
    client = await aiohttp_client(await create_app(settings_for(tmp_path, tokens_file=tokens)))
    for path, (url, _) in VALID.items():
        documented = STREAMS[path]["responses"]
        assert STREAMS[path]["security"] == [{"bearer": ["read"]}]
        resp = await client.get(url)
        assert resp.status == 401 and "401" in documented
        assert resp.content_type == "application/problem+json"
        resp = await client.get(url, headers={"Authorization": f"Bearer {scraper}"})
        assert resp.status == 403 and "403" in documented
        async with client.get(url, headers={"Authorization": f"Bearer {read}"}) as resp:
            assert resp.status == 200
            assert resp.content_type == EVENT_STREAM


async def test_head_on_stream_answers_headers_and_ends(client: TestClient[Any, Any]) -> None:
    """HEAD on a stream gets the stream's headers and returns at once, holding nothing open."""
    resp = await client.head("/counters/c/events")
    assert resp.status == 200
    assert resp.content_type == EVENT_STREAM
    assert await resp.read() == b""
    assert len(client.app[EVENTS]) == 0  # no subscription left behind
