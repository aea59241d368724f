"""The HTTP API on each backend (the ``client`` fixture runs once per backend)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
PROBLEM = "application/problem+json"


async def test_readyz_answers_ready_on_an_open_database(client: Client) -> None:
    """/readyz is 200 while the database answers."""
    r = await client.get("/readyz")
    assert r.status == 200
    assert await r.json() == {"status": "ready"}


async def test_increment_counts_from_one(client: Client) -> None:
    """Increments on a new counter answer 1, 2, 3 and the stored value follows."""
    values = []
    for _ in range(3):
        r = await client.post("/counters/hits/increment")
        assert r.status == 200
        values.append((await r.json())["value"])
    assert values == [1, 2, 3]
    r = await client.get("/counters/hits")
    assert (await r.json())["value"] == 3


async def test_increment_past_int64_answers_409_and_keeps_value(client: Client) -> None:
    """An increment past 2**63-1 is a 409 problem and leaves the stored value alone."""
    r = await client.put("/counters/big", json={"value": 2**63 - 1})
    assert r.status == 200
    r = await client.post("/counters/big/increment", json={"by": 1})
    assert r.status == 409
    assert r.content_type == PROBLEM
    assert (await r.json())["status"] == 409
    r = await client.get("/counters/big")
    assert (await r.json())["value"] == 2**63 - 1


async def test_put_with_stale_if_match_answers_412_and_keeps_record(client: Client) -> None:
    """A conditional PUT naming an old version is refused with 412; the record is unchanged."""
    r = await client.put("/items/doc", json={"value": {"v": 1}})
    assert r.status == 201
    r = await client.put("/items/doc", json={"value": {"v": 2}}, headers={"If-Match": '"1"'})
    assert r.status == 200
    r = await client.put("/items/doc", json={"value": {"v": 3}}, headers={"If-Match": '"1"'})
    assert r.status == 412
    assert r.content_type == PROBLEM
    r = await client.get("/items/doc")
    assert r.headers["ETag"] == '"2"'
    assert (await r.json())["value"] == {"v": 2}


async def test_patch_merges_and_bumps_version(client: Client) -> None:
    """A merge patch adds and removes members and bumps the version by one."""
    await client.put("/items/doc", json={"value": {"a": 1, "b": 2}})
    r = await client.patch(
        "/items/doc",
        data='{"b": null, "c": [1, "x"]}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status == 200
    body = await r.json()
    assert (body["value"], body["version"]) == ({"a": 1, "c": [1, "x"]}, 2)


async def test_list_counters_pages_in_name_order(client: Client) -> None:
    """Listing pages through counters in byte order with a ``next`` cursor."""
    for name in ["b", "a.b", "A", "a-b"]:
        await client.post(f"/counters/{name}/increment")
    r = await client.get("/counters", params={"limit": "3"})
    assert r.status == 200
    body = await r.json()
    assert [c["name"] for c in body["items"]] == ["A", "a-b", "a.b"]
    assert body["next"] == "a.b"
    r = await client.get("/counters", params={"after": "a.b"})
    assert [c["name"] for c in (await r.json())["items"]] == ["b"]
