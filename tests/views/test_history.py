"""A record's history from the change log, on both backends: listing, paging, one version."""

from __future__ import annotations

from app.storage import STORAGE
from tests.conftest import never_reaches_storage
from tests.views.helpers import MERGE_PATCH, Client, app_of, assert_problem

FUTURE = "9999-01-01T00:00:00.000Z"


async def test_versions_list_newest_first_and_page(client: Client) -> None:
    """Every PUT and PATCH of a record is listed, newest first; next pages on; deletes are not."""
    await client.put("/items/doc", json={"value": {"n": 0}})
    for n in range(1, 5):
        await client.patch("/items/doc", data=f'{{"n": {n}}}', headers=MERGE_PATCH)
    await client.put("/items/other", json={"value": 1})
    async with client.get("/items/doc/versions?limit=3") as r:
        assert r.status == 200
        first = await r.json()
    assert [v["version"] for v in first["items"]] == [5, 4, 3]
    assert first["items"][0]["value"] == {"n": 4}
    assert set(first["items"][0]) == {"id", "value", "version", "updated_at", "revision"}
    async with client.get(f"/items/doc/versions?limit=3&before={first['next']}") as r:
        second = await r.json()
    assert [v["version"] for v in second["items"]] == [2, 1]
    assert second["next"] is None
    await client.delete("/items/doc")
    async with client.get("/items/doc/versions") as r:
        assert [v["version"] for v in (await r.json())["items"]] == [5, 4, 3, 2, 1]


async def test_versions_go_on_across_a_delete_and_a_recreate(client: Client) -> None:
    """A record deleted and written again lists both lives, newest first, and pages across."""
    for value in ("a", "b"):
        await client.put("/items/doc", json={"value": value})
    await client.put("/items/other", json={"value": 0})
    await client.delete("/items/doc")
    async with client.get("/items/doc/versions") as r:
        assert [v["value"] for v in (await r.json())["items"]] == ["b", "a"]
    for value in ("c", "d"):
        await client.put("/items/doc", json={"value": value})
    async with client.get("/items/doc/versions?limit=3") as r:
        first = await r.json()
    assert [(v["value"], v["version"]) for v in first["items"]] == [("d", 2), ("c", 1), ("b", 2)]
    async with client.get(f"/items/doc/versions?limit=3&before={first['next']}") as r:
        assert [v["value"] for v in (await r.json())["items"]] == ["a"]
    async with client.get("/items/doc/versions/1") as r:
        assert (await r.json())["value"] == "c"


async def test_one_version_is_answered_with_its_etag(client: Client) -> None:
    """GET /items/{id}/versions/{v} answers that version as it was written."""
    await client.put("/items/doc", json={"value": "first"})
    await client.put("/items/doc", json={"value": "second"})
    async with client.get("/items/doc/versions/1") as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"1"'
        body = await r.json()
    assert (body["id"], body["value"], body["version"]) == ("doc", "first", 1)
    async with client.get("/items/doc/versions/3") as r:
        await assert_problem(r, 404, "not-found", "no version 3")


async def test_purged_versions_are_gone(client: Client) -> None:
    """Versions older than the retention are no longer listed or answered."""
    await client.put("/items/doc", json={"value": 1})
    assert await app_of(client)[STORAGE].purge_changes(FUTURE, 100) == 1
    async with client.get("/items/doc/versions") as r:
        assert (await r.json())["items"] == []
    async with client.get("/items/doc/versions/1") as r:
        await assert_problem(r, 404, "not-found", "LOCKSTEP_CHANGES_RETENTION")


@never_reaches_storage
async def test_history_bad_parameters_are_422(client: Client) -> None:
    """A bad version, limit or before is refused before anything is read."""
    for url in (
        "/items/doc/versions/0",
        "/items/doc/versions/x",
        "/items/doc/versions?limit=0",
        "/items/doc/versions?before=-1",
        "/items/a%20b/versions",
    ):
        async with client.get(url) as r:
            await assert_problem(r, 422, "invalid-input")
