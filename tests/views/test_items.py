"""Handler tests for the /items endpoints: records, ETags and conditional requests."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from app.locks import LOCKS
from app.main import create_app
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.views.helpers import (
    BAD_NAMES,
    MERGE_PATCH,
    Client,
    app_of,
    assert_bad_name,
    assert_problem,
    count_items,
    stored_item,
)

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ORIGINAL = {"color": "red", "size": 3, "tags": ["a", "b"], "dims": {"w": 1, "h": 2}}


async def put_record(client: Client, record_id: str, value: Any = ORIGINAL) -> dict[str, Any]:
    async with client.put(f"/items/{record_id}", json={"value": value}) as r:
        assert r.status in (200, 201)
        body: dict[str, Any] = await r.json()
        return body


async def assert_unchanged(client: Client, record_id: str, version: int, value: Any) -> None:
    """The stored record still has ``version`` and ``value``."""
    record = await stored_item(client, record_id)
    assert record is not None
    assert (record.version, record.value) == (version, value)


# --- PUT ----------------------------------------------------------------------------


async def test_put_item_creates_with_201_and_etag(client: Client) -> None:
    """PUT of a new id answers 201 with the record at version 1 and ETag "1"."""
    async with client.put("/items/cfg", json={"value": ORIGINAL}) as r:
        assert r.status == 201
        assert r.headers["ETag"] == '"1"'
        body = await r.json()
    assert {k: body[k] for k in ("id", "value", "version")} == {
        "id": "cfg",
        "value": ORIGINAL,
        "version": 1,
    }
    assert STAMP.fullmatch(body["updated_at"])
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


async def test_put_item_replaces_with_200_and_next_version(client: Client) -> None:
    """PUT of an existing id answers 200, replaces the value whole and bumps the version."""
    await put_record(client, "cfg")
    async with client.put("/items/cfg", json={"value": [1, 2]}) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"2"'
        body = await r.json()
    assert (body["value"], body["version"]) == ([1, 2], 2)
    await assert_unchanged(client, "cfg", 2, [1, 2])


@pytest.mark.parametrize(
    "value", [None, 0, -1.5, "text", True, [], {}, 10**30, {"a": [{"b": None}]}]
)
async def test_put_item_stores_any_json_value(client: Client, value: Any) -> None:
    """Any JSON value, null and big integers included, is stored and read back unchanged."""
    await put_record(client, "any", value)
    async with client.get("/items/any") as r:
        assert r.status == 200
        assert (await r.json())["value"] == value
    await assert_unchanged(client, "any", 1, value)


BAD_PUT_BODIES = [
    (b"", 422, "invalid-input", "a JSON body is required"),
    (b"{", 400, "malformed-body", "not valid JSON"),
    (b'{"value": 1} trailing', 400, "malformed-body", "not valid JSON"),
    (b'{"value": "\xff"}', 400, "malformed-body", "not valid UTF-8"),
    (b'{"value": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "malformed-body", "nested too deeply"),
    (b"{}", 422, "invalid-input", "missing required field `value`"),
    (b'{"value": 1, "version": 9}', 422, "invalid-input", "unknown field `version`"),
    (b"[1]", 422, "invalid-input", "Expected `object`, got `array`"),
    (b'{"value": 1e400}', 422, "invalid-input", "Number out of range"),
]


@never_reaches_storage
@pytest.mark.parametrize(("body", "status", "slug", "detail"), BAD_PUT_BODIES)
async def test_put_item_bad_body_is_rejected_and_changes_nothing(
    client: Client, body: bytes, status: int, slug: str, detail: str
) -> None:
    """A malformed (400) or ill-shaped (422) PUT body is refused with a clear detail."""
    await put_record(client, "cfg")
    async with client.put("/items/cfg", data=body) as r:
        await assert_problem(r, status, slug, detail)
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


async def test_put_item_if_none_match_star_creates_when_absent(client: Client) -> None:
    """PUT with If-None-Match: * creates a record that does not exist yet."""
    async with client.put("/items/new", json={"value": 1}, headers={"If-None-Match": "*"}) as r:
        assert r.status == 201
    await assert_unchanged(client, "new", 1, 1)


async def test_put_item_if_none_match_star_on_existing_is_412(client: Client) -> None:
    """PUT with If-None-Match: * on an existing record is a 412 and writes nothing."""
    await put_record(client, "cfg")
    async with client.put("/items/cfg", json={"value": 1}, headers={"If-None-Match": "*"}) as r:
        await assert_problem(r, 412, "precondition-failed", "If-None-Match")
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


async def test_put_item_if_match_current_version_replaces(client: Client) -> None:
    """PUT with If-Match naming the current version succeeds."""
    await put_record(client, "cfg")
    async with client.put("/items/cfg", json={"value": 2}, headers={"If-Match": '"1"'}) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"2"'
    await assert_unchanged(client, "cfg", 2, 2)


# Tags that only look like "1": a leading zero, other scripts' digits (Arabic-Indic one,
# superscript one), and numbers past any version, down to one too long for ``int()``.
LOOKALIKES = [
    '"01"',
    '"\u0661"',
    '"\u00b9"',
    '"\u00b2"',
    '"1' + "0" * 19 + '"',
    '"' + "1" * 5000 + '"',
]


async def test_put_item_if_match_mismatch_is_412(client: Client) -> None:
    """PUT with an If-Match naming another version is a 412 and writes nothing."""
    await put_record(client, "cfg")
    async with client.put("/items/cfg", json={"value": 2}, headers={"If-Match": '"2"'}) as r:
        await assert_problem(r, 412, "precondition-failed", 'current version ("1")')
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


# Here and in the next test only the reading of the header varies, not what storage is
# asked: one backend suffices (the test above and the If-None-Match: * ones run on each).
@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("if_match", ['"0", "3"', 'W/"1"', "1", "garbage", *LOOKALIKES])
async def test_put_item_if_match_not_naming_the_strong_etag_is_412(
    client: Client, if_match: str
) -> None:
    """PUT with an If-Match that does not name the current strong ETag is a 412, no write."""
    await put_record(client, "cfg")
    async with client.put("/items/cfg", json={"value": 2}, headers={"If-Match": if_match}) as r:
        await assert_problem(r, 412, "precondition-failed", 'current version ("1")')
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("if_none_match", LOOKALIKES)
async def test_put_item_if_none_match_lookalike_does_not_match(
    client: Client, if_none_match: str
) -> None:
    """An If-None-Match tag that only looks like the current version does not stop the PUT."""
    await put_record(client, "cfg")
    headers = {"If-None-Match": if_none_match}
    async with client.put("/items/cfg", json={"value": 2}, headers=headers) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"2"'
    await assert_unchanged(client, "cfg", 2, 2)


@pytest.mark.parametrize("if_match", ['"1"', "*"])
async def test_put_item_if_match_on_absent_is_412(client: Client, if_match: str) -> None:
    """PUT with If-Match on a record that does not exist is a 412 and creates nothing."""
    async with client.put("/items/new", json={"value": 1}, headers={"If-Match": if_match}) as r:
        await assert_problem(r, 412, "precondition-failed")
    assert await count_items(client) == 0


async def test_put_item_over_body_limit_is_413(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A PUT body larger than max_body_bytes is a 413 and writes nothing."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, max_body_bytes=64)))
    await put_record(client, "cfg", 1)
    async with client.put("/items/cfg", json={"value": "x" * 64}) as r:
        await assert_problem(r, 413, "body-too-large", "limit of 64 bytes")
    await assert_unchanged(client, "cfg", 1, 1)


# --- GET / HEAD / OPTIONS -----------------------------------------------------------


async def test_get_item_answers_record_and_etag(client: Client) -> None:
    """GET answers the stored record with its ETag."""
    created = await put_record(client, "cfg")
    async with client.get("/items/cfg") as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"1"'
        assert await r.json() == created


async def test_get_item_absent_is_404(client: Client) -> None:
    """GET of a record that does not exist is a 404 problem."""
    async with client.get("/items/ghost") as r:
        await assert_problem(r, 404, "not-found", "ghost")
    assert await count_items(client) == 0


async def test_head_and_options_item_change_nothing(client: Client) -> None:
    """HEAD answers the ETag without a body; OPTIONS is a 405; neither changes the record."""
    await put_record(client, "cfg")
    async with client.head("/items/cfg") as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"1"'
        assert await r.read() == b""
    async with client.options("/items/cfg") as r:
        await assert_problem(r, 405, "method-not-allowed")
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


# --- PATCH --------------------------------------------------------------------------


async def test_patch_item_merges_and_bumps_version(client: Client) -> None:
    """PATCH applies a merge patch: null deletes, arrays replace whole, objects merge."""
    await put_record(client, "cfg")
    patch = {"size": None, "tags": ["c"], "dims": {"h": None, "d": 3}, "shape": "round"}
    async with client.patch("/items/cfg", json=patch, headers=MERGE_PATCH) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"2"'
        body = await r.json()
    merged = {"color": "red", "tags": ["c"], "dims": {"w": 1, "d": 3}, "shape": "round"}
    assert (body["id"], body["value"], body["version"]) == ("cfg", merged, 2)
    await assert_unchanged(client, "cfg", 2, merged)


async def test_patch_item_non_object_replaces_value(client: Client) -> None:
    """A patch that is not an object replaces the whole value (RFC 7396)."""
    await put_record(client, "cfg")
    async with client.patch("/items/cfg", data=b"[1, 2]", headers=MERGE_PATCH) as r:
        assert r.status == 200
        assert (await r.json())["value"] == [1, 2]
    await assert_unchanged(client, "cfg", 2, [1, 2])


async def test_patch_item_with_charset_parameter_is_accepted(client: Client) -> None:
    """The merge-patch media type with a charset parameter is still accepted."""
    await put_record(client, "cfg", {})
    headers = {"Content-Type": "application/merge-patch+json; charset=utf-8"}
    async with client.patch("/items/cfg", data=b'{"a": 1}', headers=headers) as r:
        assert r.status == 200
    await assert_unchanged(client, "cfg", 2, {"a": 1})


async def test_patch_item_absent_is_404_and_creates_nothing(client: Client) -> None:
    """PATCH of a record that does not exist is a 404 and does not create it."""
    async with client.patch("/items/ghost", json={"a": 1}, headers=MERGE_PATCH) as r:
        await assert_problem(r, 404, "not-found")
    assert await count_items(client) == 0


@never_reaches_storage
@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
async def test_patch_item_other_content_type_is_415(
    client: Client, content_type: str | None
) -> None:
    """PATCH without Content-Type application/merge-patch+json is a 415 naming it."""
    await put_record(client, "cfg")
    headers = {"Content-Type": content_type} if content_type else {}
    async with client.patch("/items/cfg", data=b'{"size": 4}', headers=headers) as r:
        await assert_problem(r, 415, "unsupported-media-type", "application/merge-patch+json")
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


BAD_PATCH_BODIES = [
    (b"", 422, "invalid-input", "a JSON body is required"),
    (b"{", 400, "malformed-body", "not valid JSON"),
    (b"\xff", 400, "malformed-body", "not valid UTF-8"),
    (b"[" * 5000 + b"]" * 5000, 400, "malformed-body", "nested too deeply"),
    (b'{"a": 1e400}', 422, "invalid-input", "Number out of range"),
]


@never_reaches_storage
@pytest.mark.parametrize(("body", "status", "slug", "detail"), BAD_PATCH_BODIES)
async def test_patch_item_bad_body_is_rejected_and_changes_nothing(
    client: Client, body: bytes, status: int, slug: str, detail: str
) -> None:
    """A PATCH body that is empty, not JSON or out of range is refused with a clear detail."""
    await put_record(client, "cfg")
    async with client.patch("/items/cfg", data=body, headers=MERGE_PATCH) as r:
        await assert_problem(r, status, slug, detail)
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


async def test_patch_item_if_match_current_version_applies(client: Client) -> None:
    """PATCH with If-Match naming the current version applies the patch."""
    await put_record(client, "cfg", {})
    headers = {**MERGE_PATCH, "If-Match": '"1"'}
    async with client.patch("/items/cfg", json={"a": 1}, headers=headers) as r:
        assert r.status == 200
    await assert_unchanged(client, "cfg", 2, {"a": 1})


async def test_patch_item_if_match_mismatch_is_412(client: Client) -> None:
    """PATCH with a stale If-Match is a 412 and the record keeps its value and version."""
    await put_record(client, "cfg")
    await put_record(client, "cfg", {"v": 2})
    headers = {**MERGE_PATCH, "If-Match": '"1"'}
    async with client.patch("/items/cfg", json={"v": 3}, headers=headers) as r:
        await assert_problem(r, 412, "precondition-failed", 'current version ("2")')
    await assert_unchanged(client, "cfg", 2, {"v": 2})


async def test_patch_item_over_body_limit_is_413(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A PATCH body larger than max_body_bytes is a 413 and writes nothing."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, max_body_bytes=64)))
    await put_record(client, "cfg", {})
    async with client.patch("/items/cfg", json={"a": "x" * 64}, headers=MERGE_PATCH) as r:
        await assert_problem(r, 413, "body-too-large")
    await assert_unchanged(client, "cfg", 1, {})


async def test_patch_item_concurrent_patches_all_land(client: Client) -> None:
    """Concurrent PATCHes each setting their own field all survive, one version each."""
    await put_record(client, "doc", {})

    async def patch(i: int) -> int:
        async with client.patch("/items/doc", json={f"f{i}": i}, headers=MERGE_PATCH) as r:
            return r.status

    assert await asyncio.gather(*(patch(i) for i in range(30))) == [200] * 30
    await assert_unchanged(client, "doc", 31, {f"f{i}": i for i in range(30)})


async def test_patch_item_lock_timeout_is_503_and_changes_nothing(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A PATCH that cannot get its record's lock in time is a 503 and is never applied."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, lock_timeout=0.2)))
    app = app_of(client)
    await put_record(client, "cfg", {})
    async with (
        app[LOCKS].hold("item:cfg"),
        client.patch("/items/cfg", json={"a": 1}, headers=MERGE_PATCH) as r,
    ):
        await assert_problem(r, 503, "lock-timeout", "'item:cfg'")
        assert r.headers["Retry-After"] == "1"
    assert len(app[LOCKS]) == 0
    assert app[LOCKS].waiting() == 0
    await assert_unchanged(client, "cfg", 1, {})
    async with client.patch("/items/cfg", json={"b": 2}, headers=MERGE_PATCH) as r:
        assert r.status == 200
    await assert_unchanged(client, "cfg", 2, {"b": 2})


# --- DELETE -------------------------------------------------------------------------


async def test_delete_item_removes_it(client: Client) -> None:
    """DELETE answers 204 without a body and the record is gone."""
    await put_record(client, "cfg")
    async with client.delete("/items/cfg") as r:
        assert r.status == 204
        assert await r.read() == b""
    assert await stored_item(client, "cfg") is None


async def test_delete_item_absent_is_404(client: Client) -> None:
    """DELETE of a record that does not exist is a 404 problem."""
    async with client.delete("/items/ghost") as r:
        await assert_problem(r, 404, "not-found")


async def test_delete_item_if_match_current_version_deletes(client: Client) -> None:
    """DELETE with If-Match naming the current version deletes."""
    await put_record(client, "cfg")
    async with client.delete("/items/cfg", headers={"If-Match": '"1"'}) as r:
        assert r.status == 204
    assert await stored_item(client, "cfg") is None


async def test_delete_item_if_match_mismatch_is_412(client: Client) -> None:
    """DELETE with a stale If-Match is a 412 and the record stays."""
    await put_record(client, "cfg")
    async with client.delete("/items/cfg", headers={"If-Match": '"7"'}) as r:
        await assert_problem(r, 412, "precondition-failed")
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


# --- names and methods --------------------------------------------------------------


@never_reaches_storage
@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_item_bad_id_is_422(client: Client, method: str, name: str) -> None:
    """Every record method refuses a bad id with a 422 stating the rule, creating nothing."""
    url = URL(f"/items/{name}", encoded=True)
    async with client.request(method, url, json={"value": 1}, headers=MERGE_PATCH) as r:
        await assert_bad_name(r)
    assert await count_items(client) == 0


@never_reaches_storage
@pytest.mark.parametrize(("method", "path"), [("POST", "/items/cfg"), ("POST", "/items")])
async def test_item_wrong_method_is_405(client: Client, method: str, path: str) -> None:
    """A method a record URL does not take is a 405 problem with Allow, changing nothing."""
    await put_record(client, "cfg")
    async with client.request(method, path, json={"value": 1}) as r:
        await assert_problem(r, 405, "method-not-allowed")
        assert method not in r.headers["Allow"].split(",")
    await assert_unchanged(client, "cfg", 1, ORIGINAL)


# --- GET /items ---------------------------------------------------------------------


async def test_list_items_pages_in_id_order(client: Client) -> None:
    """Listing walks every record in id order with a ``next`` cursor per page."""
    ids = ["b", "a", "c:1", "c:2", "d"]
    for i in ids:
        await put_record(client, i, {"id": i})
    seen: list[str] = []
    after = ""
    while True:
        async with client.get("/items", params={"limit": "2", "after": after}) as r:
            assert r.status == 200
            body = await r.json()
        for item in body["items"]:
            assert item["value"] == {"id": item["id"]}
            assert item["version"] == 1
        seen.extend(item["id"] for item in body["items"])
        if body["next"] is None:
            break
        after = body["next"]
    assert seen == sorted(ids)


async def test_list_items_filters_by_prefix(client: Client) -> None:
    """``prefix`` keeps only ids starting with it."""
    for i in ("user:1", "user:2", "users", "team:1"):
        await put_record(client, i, 0)
    async with client.get("/items", params={"prefix": "user:", "limit": "1"}) as r:
        assert r.status == 200
        body = await r.json()
    assert [i["id"] for i in body["items"]] == ["user:1"]
    assert body["next"] == "user:1"
    async with client.get("/items", params={"prefix": "user:", "after": "user:1"}) as r:
        body = await r.json()
    assert ([i["id"] for i in body["items"]], body["next"]) == (["user:2"], None)


@never_reaches_storage
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "limit must be an integer from 1 to 1000"),
        ("limit=1001", "limit must be an integer from 1 to 1000"),
        ("limit=ten", "limit must be an integer from 1 to 1000"),
        ("prefix=a%2Fb", "prefix must be 1-200 characters"),
        ("after=" + "a" * 201, "after must be 1-200 characters"),
    ],
)
async def test_list_items_bad_parameter_is_422(client: Client, query: str, detail: str) -> None:
    """A bad limit, prefix or after is a 422 whose detail says what is allowed."""
    async with client.get(URL(f"/items?{query}", encoded=True)) as r:
        await assert_problem(r, 422, "invalid-input", detail)
