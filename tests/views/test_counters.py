"""Handler tests for GET /access and the /counters endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from yarl import URL

from app.domain import INT64_MAX, INT64_MIN
from app.locks import LOCKS
from app.main import create_app
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.views.helpers import (
    BAD_NAMES,
    Client,
    app_of,
    assert_bad_name,
    assert_problem,
    count_counters,
    stored_counter,
)


async def put_counter(client: Client, name: str, value: int) -> None:
    async with client.put(f"/counters/{name}", json={"value": value}) as r:
        assert r.status == 200


# --- GET /access --------------------------------------------------------------------


async def test_access_counts_each_request_in_text(client: Client) -> None:
    """GET /access answers text/plain with the count after its own increment, uncached."""
    for n in (1, 2, 3):
        async with client.get("/access") as r:
            assert r.status == 200
            assert r.content_type == "text/plain"
            assert r.headers["Cache-Control"] == "no-store"
            assert await r.text() == f"Resource accessed {n} times."
    assert await stored_counter(client, "access") == 3


async def test_access_answers_json_when_asked(client: Client) -> None:
    """GET /access with Accept: application/json answers {"name", "value", "version"}, uncached."""
    async with client.get("/access", headers={"Accept": "application/json"}) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert r.headers["Cache-Control"] == "no-store"
        assert await r.json() == {"name": "access", "value": 1, "version": 1}
    assert await stored_counter(client, "access") == 1


@never_reaches_storage
async def test_access_head_is_refused_without_counting(client: Client) -> None:
    """HEAD /access is a 405 and does not increment (it would if HEAD reached the handler)."""
    async with client.head("/access") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "GET"
        assert r.content_type == "application/problem+json"
    assert await stored_counter(client, "access") is None


@never_reaches_storage
@pytest.mark.parametrize("method", ["OPTIONS", "POST", "PUT", "DELETE", "PATCH"])
async def test_access_other_method_is_405_without_counting(client: Client, method: str) -> None:
    """Any method but GET on /access is a 405 problem naming GET, and nothing is counted."""
    async with client.request(method, "/access") as r:
        await assert_problem(r, 405, "method-not-allowed", "allows only")
        assert r.headers["Allow"] == "GET"
    assert await stored_counter(client, "access") is None


# --- POST /counters/{name}/increment ------------------------------------------------


async def test_increment_without_body_adds_one(client: Client) -> None:
    """An increment without a body creates the counter at 0 and adds 1, then 1 again."""
    for n in (1, 2):
        async with client.post("/counters/hits/increment") as r:
            assert r.status == 200
            assert await r.json() == {"name": "hits", "value": n, "version": n}
    assert await stored_counter(client, "hits") == 2


async def test_increment_answers_the_same_bytes_with_or_without_a_body(client: Client) -> None:
    """A bare POST answers byte for byte what a POST with a body gets."""
    name = "Az09._~:-"  # every kind of character a name may hold
    async with client.post(f"/counters/{name}/increment") as bare:
        assert bare.status == 200
        bare_type, bare_body = bare.headers["Content-Type"], await bare.read()
    async with client.post(f"/counters/{name}/increment", json={"by": -1}) as full:
        assert full.status == 200
        full_type, full_body = full.headers["Content-Type"], await full.read()
    assert bare_type == full_type == "application/json"
    assert bare_body == b'{"name":"%s","value":1,"version":1}' % name.encode()
    assert full_body == b'{"name":"%s","value":0,"version":2}' % name.encode()


async def test_bare_increment_past_int64_max_conflicts_and_changes_nothing(client: Client) -> None:
    """A bare POST past the int64 maximum answers 409 and leaves the counter as it was."""
    await put_counter(client, "edge", INT64_MAX)
    async with client.post("/counters/edge/increment") as r:
        await assert_problem(r, 409, "out-of-range", "64-bit range")
    assert await stored_counter(client, "edge") == INT64_MAX


@pytest.mark.parametrize("by", [5, -3, 0, INT64_MAX, INT64_MIN])
async def test_increment_by_amount_adds_it(client: Client, by: int) -> None:
    """``by`` may be any int64, negative and zero included; a new counter starts at 0."""
    async with client.post("/counters/hits/increment", json={"by": by}) as r:
        assert r.status == 200
        assert await r.json() == {"name": "hits", "value": by, "version": 1}
    assert await stored_counter(client, "hits") == by


async def test_increment_name_of_200_characters_is_accepted(client: Client) -> None:
    """A name of exactly 200 allowed characters (every allowed kind) is valid."""
    name = ("Az09._~:-" * 23)[:200]
    async with client.post(f"/counters/{name}/increment") as r:
        assert r.status == 200
        assert await r.json() == {"name": name, "value": 1, "version": 1}
    assert await stored_counter(client, name) == 1


BAD_INCREMENT_BODIES = [
    (b"{", 400, "malformed-body", "not valid JSON"),
    (b"\xff", 400, "malformed-body", "not valid UTF-8"),
    (b'{"by": 1} x', 400, "malformed-body", "not valid JSON"),
    (b'{"by": "1"}', 422, "invalid-input", "Expected `int`, got `str`"),
    (b'{"by": 1.5}', 422, "invalid-input", "Expected `int`, got `float`"),
    (b'{"by": true}', 422, "invalid-input", "Expected `int`, got `bool`"),
    (b'{"by": null}', 422, "invalid-input", "Expected `int`, got `null`"),
    (b'{"by": 9223372036854775808}', 422, "invalid-input", "<= 9223372036854775807"),
    (b'{"by": -9223372036854775809}', 422, "invalid-input", ">= -9223372036854775808"),
    (b'{"by": 1, "extra": 2}', 422, "invalid-input", "unknown field `extra`"),
    (b"[1]", 422, "invalid-input", "Expected `object`, got `array`"),
    (b"7", 422, "invalid-input", "Expected `object`, got `int`"),
]


@never_reaches_storage
@pytest.mark.parametrize(("body", "status", "slug", "detail"), BAD_INCREMENT_BODIES)
async def test_increment_bad_body_is_rejected_and_changes_nothing(
    client: Client, body: bytes, status: int, slug: str, detail: str
) -> None:
    """A malformed (400) or ill-typed (422) increment body is refused with a clear detail."""
    await put_counter(client, "hits", 7)
    async with client.post("/counters/hits/increment", data=body) as r:
        await assert_problem(r, status, slug, detail)
    assert await stored_counter(client, "hits") == 7


@pytest.mark.parametrize(("start", "by"), [(INT64_MAX, 1), (INT64_MIN, -1), (-5, INT64_MIN)])
async def test_increment_leaving_int64_range_conflicts_and_changes_nothing(
    client: Client, start: int, by: int
) -> None:
    """An increment whose result leaves the signed 64-bit range is a 409; the value stays."""
    await put_counter(client, "edge", start)
    async with client.post("/counters/edge/increment", json={"by": by}) as r:
        await assert_problem(r, 409, "out-of-range", "64-bit range")
    assert await stored_counter(client, "edge") == start


async def test_increment_over_body_limit_is_413_and_changes_nothing(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A body larger than max_body_bytes is refused with 413 before anything is applied."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, max_body_bytes=64)))
    await put_counter(client, "hits", 7)
    async with client.post("/counters/hits/increment", data=b'{"by": 1}' + b" " * 64) as r:
        await assert_problem(r, 413, "body-too-large", "limit of 64 bytes")
    assert await stored_counter(client, "hits") == 7


@never_reaches_storage
@pytest.mark.parametrize("name", BAD_NAMES)
async def test_increment_bad_name_is_422_and_creates_nothing(client: Client, name: str) -> None:
    """A name outside the allowed alphabet or length is a 422 that states the rule."""
    async with client.post(URL(f"/counters/{name}/increment", encoded=True)) as r:
        await assert_bad_name(r)
    assert await count_counters(client) == 0


async def test_increment_lock_timeout_is_503_and_never_applied(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """An increment that cannot get its lock in time is a 503 and is never applied later."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, lock_timeout=0.2)))
    app = app_of(client)
    async with app[LOCKS].hold("counter:hits"), client.post("/counters/hits/increment") as r:
        await assert_problem(r, 503, "lock-timeout", "'counter:hits'")
        assert r.headers["Retry-After"] == "1"
    assert len(app[LOCKS]) == 0
    assert app[LOCKS].waiting() == 0
    assert await stored_counter(client, "hits") is None
    # The next holder of the lock must not apply the timed-out request's increment.
    async with client.post("/counters/hits/increment") as r:
        assert r.status == 200
        assert await r.json() == {"name": "hits", "value": 1, "version": 1}
    assert await stored_counter(client, "hits") == 1


async def test_increment_concurrent_requests_each_get_their_own_value(client: Client) -> None:
    """Concurrent increments of one counter return 1..N, each exactly once."""

    async def bump() -> int:
        async with client.post("/counters/hot/increment") as r:
            assert r.status == 200
            value: int = (await r.json())["value"]
            return value

    values = await asyncio.gather(*(bump() for _ in range(50)))
    assert sorted(values) == list(range(1, 51))
    assert await stored_counter(client, "hot") == 50
    assert len(app_of(client)[LOCKS]) == 0


# --- GET / PUT / DELETE /counters/{name} --------------------------------------------


async def test_get_counter_answers_its_value(client: Client) -> None:
    """GET answers the committed value of an existing counter."""
    await put_counter(client, "hits", -42)
    async with client.get("/counters/hits") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == {"name": "hits", "value": -42, "version": 1}


async def test_get_counter_absent_is_404(client: Client) -> None:
    """GET of a counter that never existed is a 404 problem and creates nothing."""
    async with client.get("/counters/ghost") as r:
        await assert_problem(r, 404, "not-found", "ghost")
    assert await count_counters(client) == 0


async def test_head_counter_answers_without_changing_it(client: Client) -> None:
    """HEAD on a counter answers like GET without a body and changes nothing."""
    await put_counter(client, "hits", 3)
    async with client.head("/counters/hits") as r:
        assert r.status == 200
        assert await r.read() == b""
    assert await stored_counter(client, "hits") == 3


@never_reaches_storage
async def test_options_counter_is_405_and_changes_nothing(client: Client) -> None:
    """OPTIONS on a counter or its increment URL is a 405 and creates nothing."""
    for path in ("/counters/hits", "/counters/hits/increment"):
        async with client.options(path) as r:
            await assert_problem(r, 405, "method-not-allowed")
            assert "OPTIONS" not in r.headers["Allow"]
    assert await count_counters(client) == 0


@never_reaches_storage
@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_counter_bad_name_is_422(client: Client, method: str, name: str) -> None:
    """Every counter method refuses a bad name with a 422 stating the rule."""
    async with client.request(
        method, URL(f"/counters/{name}", encoded=True), json={"value": 1}
    ) as r:
        await assert_bad_name(r)
    assert await count_counters(client) == 0


async def test_put_counter_sets_and_creates(client: Client) -> None:
    """PUT sets a counter to the given value, creating it when absent."""
    for version, value in enumerate((10, INT64_MIN, 0), 1):
        async with client.put("/counters/hits", json={"value": value}) as r:
            assert r.status == 200
            assert await r.json() == {"name": "hits", "value": value, "version": version}
        assert await stored_counter(client, "hits") == value


BAD_SET_BODIES = [
    (b"", 422, "invalid-input", "a JSON body is required"),
    (b"{", 400, "malformed-body", "not valid JSON"),
    (b"{}", 422, "invalid-input", "missing required field `value`"),
    (b'{"value": "3"}', 422, "invalid-input", "Expected `int`, got `str`"),
    (b'{"value": 1e3}', 422, "invalid-input", "Expected `int`, got `float`"),
    (b'{"value": 9223372036854775808}', 422, "invalid-input", "<= 9223372036854775807"),
    (b'{"value": -9223372036854775809}', 422, "invalid-input", ">= -9223372036854775808"),
    (b'{"value": 1, "by": 1}', 422, "invalid-input", "unknown field `by`"),
]


@never_reaches_storage
@pytest.mark.parametrize(("body", "status", "slug", "detail"), BAD_SET_BODIES)
async def test_put_counter_bad_body_is_rejected_and_changes_nothing(
    client: Client, body: bytes, status: int, slug: str, detail: str
) -> None:
    """A set with a missing, ill-typed or out-of-range value is refused with a clear detail."""
    await put_counter(client, "hits", 7)
    async with client.put("/counters/hits", data=body) as r:
        await assert_problem(r, status, slug, detail)
    assert await stored_counter(client, "hits") == 7


async def test_delete_counter_removes_it(client: Client) -> None:
    """DELETE answers 204 with no body and the counter is gone."""
    await put_counter(client, "hits", 5)
    async with client.delete("/counters/hits") as r:
        assert r.status == 204
        assert await r.read() == b""
    assert await stored_counter(client, "hits") is None


async def test_delete_counter_absent_is_404(client: Client) -> None:
    """DELETE of a counter that does not exist is a 404 problem."""
    async with client.delete("/counters/ghost") as r:
        await assert_problem(r, 404, "not-found")
    assert await count_counters(client) == 0


@never_reaches_storage
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/counters/hits"),
        ("PATCH", "/counters/hits"),
        ("GET", "/counters/hits/increment"),
        ("DELETE", "/counters"),
    ],
)
async def test_counter_wrong_method_is_405(client: Client, method: str, path: str) -> None:
    """A method a counter URL does not take is a 405 problem with Allow, changing nothing."""
    await put_counter(client, "hits", 7)
    async with client.request(method, path, json={"value": 1}) as r:
        await assert_problem(r, 405, "method-not-allowed")
        assert method not in r.headers["Allow"].split(",")
    assert await stored_counter(client, "hits") == 7


# --- GET /counters ------------------------------------------------------------------


async def test_list_counters_pages_in_name_order(client: Client) -> None:
    """Listing walks every counter in name order, ``next`` naming the cursor for each page."""
    names = ["b", "a", "c:1", "c:2", "d"]
    for i, name in enumerate(names):
        await put_counter(client, name, i)
    seen: list[dict[str, object]] = []
    after = ""
    pages = 0
    while True:
        async with client.get("/counters", params={"limit": "2", "after": after}) as r:
            assert r.status == 200
            body = await r.json()
        pages += 1
        seen.extend(body["items"])
        if body["next"] is None:
            break
        assert body["next"] == body["items"][-1]["name"]
        after = body["next"]
    assert pages == 3
    assert seen == [{"name": n, "value": names.index(n), "version": 1} for n in sorted(names)]


async def test_list_counters_filters_by_prefix(client: Client) -> None:
    """``prefix`` keeps only names starting with it; ``after`` skips up to and including it."""
    for name in ("c:1", "c:2", "c:3", "cat", "b"):
        await put_counter(client, name, 1)
    async with client.get("/counters", params={"prefix": "c:"}) as r:
        assert r.status == 200
        assert await r.json() == {
            "items": [{"name": n, "value": 1, "version": 1} for n in ("c:1", "c:2", "c:3")],
            "next": None,
        }
    async with client.get("/counters", params={"prefix": "c:", "after": "c:1"}) as r:
        assert r.status == 200
        assert [i["name"] for i in (await r.json())["items"]] == ["c:2", "c:3"]


async def test_list_counters_empty_answers_no_items(client: Client) -> None:
    """Listing with nothing stored answers an empty page without a cursor."""
    async with client.get("/counters") as r:
        assert r.status == 200
        assert await r.json() == {"items": [], "next": None}


async def test_list_counters_limit_allows_1000_at_most(client: Client) -> None:
    """limit=1000 returns 1,000 of 1,001 counters and a cursor; the next page holds the last."""
    names = [f"n{i:04d}" for i in range(1001)]

    async def create(name: str) -> None:
        async with client.post(f"/counters/{name}/increment") as r:
            assert r.status == 200

    await asyncio.gather(*(create(n) for n in names))
    async with client.get("/counters", params={"limit": "1000"}) as r:
        assert r.status == 200
        body = await r.json()
    assert [i["name"] for i in body["items"]] == names[:1000]
    assert body["next"] == names[999]
    async with client.get("/counters", params={"after": body["next"]}) as r:
        assert await r.json() == {
            "items": [{"name": names[1000], "value": 1, "version": 1}],
            "next": None,
        }
    async with client.get("/counters") as r:
        assert len((await r.json())["items"]) == 100


@never_reaches_storage
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "limit must be an integer from 1 to 1000"),
        ("limit=1001", "limit must be an integer from 1 to 1000"),
        ("limit=-1", "limit must be an integer from 1 to 1000"),
        ("limit=abc", "limit must be an integer from 1 to 1000"),
        ("limit=1.5", "limit must be an integer from 1 to 1000"),
        ("limit=", "limit must be an integer from 1 to 1000"),
        ("prefix=a%2Fb", "prefix must be 1-200 characters"),
        ("prefix=" + "a" * 201, "prefix must be 1-200 characters"),
        ("after=a%20b", "after must be 1-200 characters"),
        ("after=%C3%A9", "after must be 1-200 characters"),
    ],
)
async def test_list_counters_bad_parameter_is_422(client: Client, query: str, detail: str) -> None:
    """A bad limit, prefix or after is a 422 whose detail says what is allowed."""
    async with client.get(URL(f"/counters?{query}", encoded=True)) as r:
        await assert_problem(r, 422, "invalid-input", detail)


# The Accept header picks only the answer's type: GET /access on every backend is covered
# by the two tests at the top of this file.
@pytest.mark.backends("sqlite")
@pytest.mark.parametrize(
    ("accept", "json_wanted"),
    [
        ("", False),
        ("*/*", False),
        ("text/plain", False),
        ("application/json", True),
        ("text/html, application/json;q=0.9", True),
        ("application/json, text/plain", True),
        ("application/json;q=0", False),
        ("application/json; q=0.0", False),
        ("text/plain, application/json;q=0.5", False),
        ("application/json;q=0.5, text/*;q=0.4", True),
        ("application/*, text/plain;q=0.1", False),  # no "json" in it: text
        ("application/json;q=oops", False),
        ("application/vnd.api+json", False),
    ],
)
async def test_access_negotiates_json_by_weight(
    client: Client, accept: str, json_wanted: bool
) -> None:
    """GET /access answers JSON only when Accept weighs JSON above zero and not below text."""
    async with client.get("/access", headers={"Accept": accept}) as r:
        assert r.status == 200
        expected = "application/json" if json_wanted else "text/plain"
        assert r.content_type == expected
