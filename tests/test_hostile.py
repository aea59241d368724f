"""Hostile input, case by case: each gets a clean 4xx problem body and leaves stored data alone.

Wire-level cases talk raw HTTP/1.1 over asyncio streams to the test server's real socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app.main import create_app
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.views.helpers import BAD_NAMES, assert_problem

PROBLEM = "application/problem+json"


class Raw:
    """A parsed HTTP/1.1 response read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == PROBLEM, self.headers
        body: dict[str, Any] = json.loads(self.body)
        assert body["status"] == self.status
        return body


async def read_response(reader: asyncio.StreamReader) -> Raw | None:
    """One response from ``reader``; None if the server closed the connection first."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Raw(status, headers, body)


async def exchange(client: TestClient[Any, Any], data: bytes, *, half_close: bool = False) -> Raw:
    """Send ``data`` on a fresh connection and read one response."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        await writer.drain()
        response = await read_response(reader)
        assert response is not None
        return response
    finally:
        writer.close()
        await writer.wait_closed()


def request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def stored(client: TestClient[Any, Any]) -> tuple[Any, Any]:
    """Everything stored: all counters and all records."""
    counters = await (await client.get("/counters", params={"limit": "1000"})).json()
    items = await (await client.get("/items", params={"limit": "1000"})).json()
    return counters, items


@pytest.fixture
async def seeded(client: TestClient[Any, Any]) -> tuple[Any, Any]:
    """A counter and a record to be left untouched; returns the stored state."""
    assert (await client.put("/counters/c", json={"value": 7})).status == 200
    assert (await client.put("/items/r", json={"value": {"a": [1, 2]}})).status == 201
    return await stored(client)


# A plain "." too: HTTP clients resolve it before sending, a raw request line does not.
@never_reaches_storage
@pytest.mark.parametrize("name", [*BAD_NAMES, "."])
async def test_write_with_bad_name_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], name: str
) -> None:
    """Names with NUL, invalid UTF-8, 201 characters, %2F or dot segments get 422 on every write."""
    for method, path, body in (
        ("PUT", f"/counters/{name}", b'{"value": 1}'),
        ("POST", f"/counters/{name}/increment", b""),
        ("PUT", f"/items/{name}", b'{"value": 1}'),
    ):
        raw = await exchange(client, request(method, path, body))
        assert raw.status == 422, (method, path)
        assert "name" in raw.problem()["detail"] or "id" in raw.problem()["detail"]
    assert await stored(client) == seeded


async def test_name_of_200_characters_is_accepted(client: TestClient[Any, Any]) -> None:
    """The name length limit is exactly 200: the boundary itself is fine."""
    resp = await client.put("/counters/" + "n" * 200, json={"value": 1})
    assert resp.status == 200


@never_reaches_storage
async def test_raw_non_ascii_bytes_in_path_are_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any]
) -> None:
    """Unencoded invalid UTF-8 in the request line is refused by the HTTP parser with a 400."""
    raw = await exchange(client, request("PUT", "/counters/\xff\xfe", b'{"value": 1}'))
    assert raw.status == 400
    assert await stored(client) == seeded


DOT_PATHS = ["/counters/../items/r", "/counters/%2e%2e/items/r", "/items/./r", "/items/r/.."]


@never_reaches_storage
@pytest.mark.parametrize("path", DOT_PATHS)
async def test_dot_segment_paths_reach_no_other_resource(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], path: str
) -> None:
    """Dot segments, plain or encoded, never route a write to another resource."""
    raw = await exchange(client, request("PUT", path, b'{"value": 99}'))
    assert raw.status in (404, 422)
    raw.problem()
    assert await stored(client) == seeded


MALFORMED = (400, "malformed-body")
INVALID = (422, "invalid-input")
BAD_COUNTER_BODIES = [
    (b'{"by": "5"}', *INVALID),  # number as string
    (b'{"by": 1.5}', *INVALID),  # float
    (b'{"by": 1.0}', *INVALID),  # integral float
    (b'{"by": 1e400}', *INVALID),  # overflows a double
    (b'{"by": 18446744073709551616}', *INVALID),  # 2**64
    (b'{"by": -9223372036854775809}', *INVALID),  # INT64_MIN - 1
    (b'{"by": 1, "by": 5}', *MALFORMED),  # duplicate key
    (b'{"by": 1, "extra": 2}', *INVALID),  # unknown field
    (b'{"by": 1}\x00', *MALFORMED),  # NUL after the document
    (b'{"by": 1', *MALFORMED),  # truncated
    (b"\xff\xfe{}", *MALFORMED),  # invalid UTF-8
    (b"[" * 10_000 + b"]" * 10_000, *INVALID),  # deep nesting: not the object expected, at byte 0
]


@never_reaches_storage
@pytest.mark.parametrize(("body", "status", "slug"), BAD_COUNTER_BODIES)
async def test_increment_with_hostile_body_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], body: bytes, status: int, slug: str
) -> None:
    """Strings, floats, 1e400, >64-bit integers, duplicates, bad bytes, deep nesting: refused."""
    resp = await client.post("/counters/c/increment", data=body)
    await assert_problem(resp, status, slug)
    assert await stored(client) == seeded


BAD_RECORD_BODIES = [
    (b'{"value": 1e400}', *INVALID),
    (b'{"value": [1, ' + b"9" * 5000 + b"]}", *INVALID),  # an integer of 5000 digits
    (b'{"value": {"a": 1, "a": 2}}', *MALFORMED),  # duplicate key inside a value
    (b'{"value": 1, "value": 2}', *MALFORMED),
    (b'{"value": "\xff"}', *MALFORMED),  # invalid UTF-8 in a string
    (b'{"value": "a\x00b"}', *MALFORMED),  # raw NUL in a string
    (b'{"value": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", *MALFORMED),
    (b'{"value": ' + b'{"k":' * 10_000 + b"1" + b"}" * 10_001, *MALFORMED),
    (b'{"value": ' + b"[" * 33 + b"]" * 33 + b"}", *MALFORMED),  # a value one past depth 32
]


@never_reaches_storage
@pytest.mark.parametrize(("body", "status", "slug"), BAD_RECORD_BODIES)
async def test_put_record_with_hostile_body_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], body: bytes, status: int, slug: str
) -> None:
    """Record values that are ambiguous, unportable or too deep are refused whole."""
    resp = await client.put("/items/r", data=body)
    await assert_problem(resp, status, slug)
    assert await stored(client) == seeded


@never_reaches_storage
async def test_patch_with_deep_or_duplicate_patch_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any]
) -> None:
    """A merge patch goes through the same limits as a PUT body."""
    headers = {"Content-Type": "application/merge-patch+json"}
    for body in (b'{"a": 1, "a": 2}', b'{"a":' * 5000 + b"1" + b"}" * 5000):
        resp = await client.patch("/items/r", data=body, headers=headers)
        await assert_problem(resp, *MALFORMED)
    assert await stored(client) == seeded


async def test_value_at_depth_limit_is_accepted(client: TestClient[Any, Any]) -> None:
    """A value nested exactly to the limit (32 arrays; the body's object is not counted)
    is stored."""
    value = json.loads("[" * 32 + "]" * 32)
    resp = await client.put("/items/deep", json={"value": value})
    assert resp.status == 201
    assert (await resp.json())["value"] == value


@never_reaches_storage
async def test_body_of_2_mib_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any]
) -> None:
    """A 2 MiB body gets 413 and nothing is stored."""
    body = b'{"value": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    raw = await exchange(client, request("PUT", "/items/r", body))
    assert raw.status == 413
    raw.problem()
    assert await stored(client) == seeded


@never_reaches_storage
async def test_headers_of_16_kib_are_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any]
) -> None:
    """16 KiB of headers, in one header or in many, get 431 with a problem body."""
    one = {"X-Pad": "p" * 16 * 1024}
    many = {f"X-Pad-{i}": "p" * 160 for i in range(100)}
    for headers in (one, many):
        resp = await client.put("/counters/c", json={"value": 1}, headers=headers)
        await assert_problem(resp, 431, "headers-too-large")
    assert await stored(client) == seeded


@never_reaches_storage
async def test_header_past_parser_cap_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any]
) -> None:
    """A header line past the parser's hard cap (4 x the limit) is refused before any handler,
    with a problem body that does not quote it."""
    extra = "X-Pad: " + "p" * 40_000 + "\r\n"
    raw = await exchange(client, request("PUT", "/counters/c", b'{"value": 1}', extra))
    assert raw.status == 400
    assert raw.problem()["type"] == "urn:lockstep:problem:malformed-request"
    assert b"ppp" not in raw.body
    assert await stored(client) == seeded


@never_reaches_storage
async def test_body_shorter_than_content_length_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A body that ends (half-close) before its Content-Length writes nothing and logs no error."""
    head = b"PUT /items/r HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + b'{"value": 5}')
    writer.write_eof()
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    # The server may not answer a client that stopped sending; if it does, it is a 400.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    assert await stored(client) == seeded
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@never_reaches_storage
async def test_body_longer_than_content_length_is_refused(
    client: TestClient[Any, Any], seeded: tuple[Any, Any]
) -> None:
    """Bytes past Content-Length are not a request: 400 (parser), connection closed, no write."""
    body = b'{"value": 12345}'
    head = b"PUT /items/r HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n"
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + body)
    await writer.drain()
    # One segment: the HTTP parser refuses it whole. Had the leftover arrived later, the
    # 5-byte body would have got its own 400 problem first; either way nothing is stored.
    statuses = []
    while (resp := await read_response(reader)) is not None:
        statuses.append(resp.status)
    writer.close()
    await writer.wait_closed()
    assert statuses and set(statuses) == {400}
    assert await stored(client) == seeded


@never_reaches_storage
async def test_request_abandoned_halfway_writes_nothing(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects mid-body leaves no write behind and the service answering."""
    assert client.server.port is not None
    for cut in (10, 60):
        _, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        full = request("PUT", "/items/r", b'{"value": {"replaced": "by a half-sent body"}}')
        writer.write(full[: len(full) - cut])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await stored(client) == seeded
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_pipelined_flood_is_answered_in_order(client: TestClient[Any, Any]) -> None:
    """500 pipelined increments on one connection get 500 in-order answers and count exactly."""
    n = 500
    one = b"POST /counters/flood/increment HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(one * n)
    await writer.drain()
    values = []
    for _ in range(n):
        resp = await read_response(reader)
        assert resp is not None and resp.status == 200
        values.append(json.loads(resp.body)["value"])
    writer.close()
    await writer.wait_closed()
    assert values == list(range(1, n + 1))
    resp2 = await client.get("/counters/flood")
    assert resp2.status == 200
    assert (await resp2.json())["value"] == n


@never_reaches_storage
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_body_not_in_its_content_encoding_is_refused(
    client: TestClient[Any, Any],
    seeded: tuple[Any, Any],
    caplog: pytest.LogCaptureFixture,
    encoding: str,
) -> None:
    """A body that is not in the Content-Encoding it names gets a 400 problem and no write."""
    extra = f"Content-Encoding: {encoding}\r\n"
    raw = await exchange(client, request("PUT", "/items/r", b'{"value": 5}', extra))
    assert raw.status == 400
    assert raw.problem()["detail"] == f"the body is not valid {encoding} data, as its headers say"
    assert await stored(client) == seeded
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@never_reaches_storage
@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_body_in_an_undecodable_content_encoding_is_415(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], encoding: str
) -> None:
    """An encoding aiohttp has no decoder for, refused by its parser, is a 415 problem naming
    the encodings taken, not a 400 calling the request malformed."""
    extra = f"Content-Encoding: {encoding}\r\n"
    raw = await exchange(client, request("PUT", "/items/r", b'{"value": 5}', extra))
    assert raw.status == 415
    problem = raw.problem()
    assert problem["type"] == "urn:lockstep:problem:unsupported-media-type"
    assert "gzip, deflate or none" in problem["detail"]
    assert raw.headers["accept-encoding"] == "gzip, deflate"
    assert await stored(client) == seeded


@never_reaches_storage
@pytest.mark.parametrize("encoding", ["x-made-up", "gzip, identity", "compress"])
async def test_body_in_an_unknown_content_encoding_is_415(
    client: TestClient[Any, Any], seeded: tuple[Any, Any], encoding: str
) -> None:
    """A coding aiohttp would pass through undecoded is a 415 problem, not read as identity."""
    for method, path in (("PUT", "/items/r"), ("PUT", "/counters/c"), ("PATCH", "/items/r")):
        extra = f"Content-Encoding: {encoding}\r\n"
        if method == "PATCH":
            extra += "Content-Type: application/merge-patch+json\r\n"
        raw = await exchange(client, request(method, path, b'{"value": 5}', extra))
        assert raw.status == 415
        assert "gzip, deflate or none" in raw.problem()["detail"]
    assert await stored(client) == seeded


async def test_put_record_over_the_record_cap_is_413(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A PUT whose value is larger than LOCKSTEP_MAX_RECORD_BYTES (as a compact PUT body) is
    refused with 413 and stores nothing, even though its body is within the body limit."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, max_record_bytes=100)))
    resp = await client.put("/items/r", data=b'{"value": "' + b"x" * 80 + b'"}')
    assert resp.status == 201  # 10 + 82 bytes: within the cap
    resp = await client.put("/items/r", data=b'{"value":   "' + b"x" * 89 + b'"}')
    await assert_problem(resp, 413, "record-too-large")  # 10 + 91 bytes, whitespace not counted
    assert (await (await client.get("/items/r")).json())["version"] == 1
