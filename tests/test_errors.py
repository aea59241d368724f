"""Error answers that say what went wrong and how to do it right, with the service's own types."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from tests.conftest import ClientFactory, settings_for
from tests.views.helpers import MERGE_PATCH, Client, assert_problem


@pytest.fixture
async def api(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    """A client on a fresh app holding counter ``c`` at 7 and record ``r`` at version 1."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, max_body_bytes=64)))
    assert (await client.put("/counters/c", json={"value": 7})).status == 200
    assert (await client.put("/items/r", json={"value": {"a": 1}})).status == 201
    return client


async def stored(api: Client) -> tuple[Any, Any]:
    """Counter ``c`` and record ``r`` as stored."""
    counter = await (await api.get("/counters/c")).json()
    record = await (await api.get("/items/r")).json()
    return counter, record


# Invalid UTF-8 in a string where a number belongs (msgspec reports the type, not the bytes),
# in a string value, in a key, and hidden under gzip.
NOT_UTF8 = b'{"by": "\xff\xfe\xc3"}'
BODIES = [
    ("POST", "/counters/c/increment", NOT_UTF8, {}),
    ("POST", "/counters/c/increment", b'{"\xff": 1}', {}),
    ("PUT", "/counters/c", b'{"value": "\xff\xfe\xc3"}', {}),
    ("PUT", "/items/r", b'{"value": "\xff\xfe\xc3"}', {}),
    ("PATCH", "/items/r", b'{"a": "\xc3"}', MERGE_PATCH),
    ("POST", "/counters/c/increment", gzip.compress(NOT_UTF8), {"Content-Encoding": "gzip"}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), BODIES)
async def test_body_not_in_utf8_is_400_on_every_endpoint(
    api: Client, method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    """A JSON body that is not UTF-8 is malformed (400), whatever the field it is in."""
    before = await stored(api)
    async with api.request(method, path, data=body, headers=headers) as r:
        await assert_problem(r, 400, "malformed-body", "not valid UTF-8: byte 0x")
    assert await stored(api) == before


async def test_unknown_path_404_names_the_path(api: Client) -> None:
    """A URL no route has is a not-found problem naming the path (cut short) and the API list."""
    async with api.get("/countrs/c") as r:
        await assert_problem(r, 404, "not-found", "no such path: /countrs/c; the API is listed")
    async with api.get("/" + "x" * 5000) as r:
        body = await assert_problem(r, 404, "not-found", "/xxx")
        assert len(body["detail"]) < 300


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/counters", "GET, HEAD"),
        ("POST", "/items/r", "DELETE, GET, HEAD, PATCH, PUT"),
        ("HEAD", "/access", "GET"),
    ],
)
async def test_wrong_method_405_lists_the_allowed_ones(
    api: Client, method: str, path: str, allowed: str
) -> None:
    """A method the path lacks is a method-not-allowed problem; detail and Allow agree."""
    async with api.request(method, path) as r:
        if method == "HEAD":  # no body to read
            assert r.status == 405 and r.content_type == "application/problem+json"
        else:
            await assert_problem(r, 405, "method-not-allowed", f"{path} allows only {allowed}")
        assert r.headers["Allow"] == allowed


async def test_body_over_the_limit_413_names_the_limit(api: Client) -> None:
    """A body past LOCKSTEP_MAX_BODY_BYTES is a body-too-large problem giving the limit."""
    before = await stored(api)
    async with api.put("/items/r", data=b'{"value": "' + b"x" * 100 + b'"}') as r:
        await assert_problem(
            r, 413, "body-too-large", "larger than the limit of 64 bytes (LOCKSTEP_MAX_BODY_BYTES)"
        )
    assert await stored(api) == before


async def test_unsupported_media_415_says_what_is_taken(api: Client) -> None:
    """A PATCH that is not a merge patch names the type (and Accept-Patch); a body in an
    unknown coding names the codings taken (and Accept-Encoding)."""
    before = await stored(api)
    async with api.patch("/items/r", json={"a": 2}) as r:
        await assert_problem(r, 415, "unsupported-media-type", "application/merge-patch+json")
        assert r.headers["Accept-Patch"] == "application/merge-patch+json"
    headers = {"Content-Encoding": "compress"}
    async with api.put("/items/r", data=b'{"value": 2}', headers=headers) as r:
        await assert_problem(r, 415, "unsupported-media-type", "gzip, deflate or none")
        assert r.headers["Accept-Encoding"] == "gzip, deflate"
    assert await stored(api) == before


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [
        ("PUT", {}, {"value": 2}),
        ("PATCH", MERGE_PATCH, {"a": 2}),
        ("DELETE", {}, None),
    ],
)
async def test_unquoted_if_match_412_says_tags_are_quoted(
    api: Client, method: str, headers: dict[str, str], body: Any
) -> None:
    """If-Match: 1 (the version without its quotes) fails, and the detail shows the quoted form."""
    before = await stored(api)
    async with api.request(
        method, "/items/r", json=body, headers={"If-Match": "1", **headers}
    ) as r:
        await assert_problem(
            r,
            412,
            "precondition-failed",
            'current version ("1"); entity tags are quoted: If-Match: "1"',
        )
    assert await stored(api) == before


async def test_quoted_if_match_412_has_no_quoting_hint(api: Client) -> None:
    """A well-formed tag that is simply stale gets no advice about quotes."""
    async with api.put("/items/r", json={"value": 2}, headers={"If-Match": '"2", "3"'}) as r:
        body = await assert_problem(r, 412, "precondition-failed", '("1")')
        assert "quoted" not in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("PUT", "/items/r", {}, {"value": 2}),
        ("PUT", "/items/new", {}, {"value": 2}),
        ("PATCH", "/items/r", MERGE_PATCH, {"a": 2}),
        ("DELETE", "/items/r", {}, None),
    ],
)
async def test_unquoted_if_none_match_412_says_tags_are_quoted(
    api: Client, method: str, path: str, headers: dict[str, str], body: Any
) -> None:
    """If-None-Match: 1 refuses the write (it never matches, so it would guard nothing)."""
    before = await stored(api)
    async with api.request(method, path, json=body, headers={"If-None-Match": "1", **headers}) as r:
        await assert_problem(
            r,
            412,
            "precondition-failed",
            "If-None-Match holds a tag without quotes, which matches nothing;"
            ' entity tags are quoted: If-None-Match: "1"',
        )
    assert await stored(api) == before
    async with api.get("/items/new") as r:
        assert r.status == 404


async def test_weak_if_none_match_compares_weakly(api: Client) -> None:
    """If-None-Match: W/"1" matches version 1 (RFC 9110's weak comparison); W/"2" does not."""
    before = await stored(api)
    async with api.put("/items/r", json={"value": 2}, headers={"If-None-Match": 'W/"1"'}) as r:
        await assert_problem(r, 412, "precondition-failed", "If-None-Match matched")
    assert await stored(api) == before
    async with api.put("/items/r", json={"value": 2}, headers={"If-None-Match": 'W/"2"'}) as r:
        assert r.status == 200
        assert (await r.json())["version"] == 2
