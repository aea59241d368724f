"""GET /changes on both backends: pages of whole commits, filters, 410 after a purge, long polls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.housekeeping import purge_old_changes
from app.storage import STORAGE
from tests.conftest import never_reaches_storage
from tests.views.helpers import Client, app_of, assert_problem

FUTURE = "9999-01-01T00:00:00.000Z"


async def changes(client: Client, **params: Any) -> dict[str, Any]:
    async with client.get("/changes", params={k: str(v) for k, v in params.items()}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_changes_lists_every_commit_in_revision_order(client: Client) -> None:
    """Entries have the documented shape; next resumes after them; oldest starts at 1."""
    async with client.post("/counters/a/increment", json={"by": 5}) as r:
        first = int(r.headers["Lockstep-Revision"])
    await client.put("/items/doc", json={"value": {"k": [1]}})
    await client.delete("/counters/a")
    body = await changes(client, since=0)
    assert body["oldest"] == 1
    entries = body["changes"]
    assert [e["revision"] for e in entries] == [first, first + 1, first + 2]
    assert entries[0] == {
        "revision": first,
        "kind": "counter",
        "name": "a",
        "value": 5,
        "version": 1,
        "time": entries[0]["time"],
    }
    assert (entries[1]["id"], entries[1]["value"], entries[1]["version"]) == ("doc", {"k": [1]}, 1)
    assert (entries[2]["value"], entries[2]["version"]) == (None, None)
    assert body["next"] == first + 2
    assert (await changes(client, since=body["next"]))["changes"] == []


async def test_changes_pages_hold_whole_commits_and_join_up_exactly(client: Client) -> None:
    """Paging with a small limit visits every entry once, in order, and never splits a commit."""
    for round_ in range(4):
        await asyncio.gather(
            *(client.post(f"/counters/c{i}/increment") for i in range(5)),
            client.put(f"/items/r{round_}", json={"value": round_}),
        )
    everything = (await changes(client, since=0, limit=1000))["changes"]
    seen: list[dict[str, Any]] = []
    since = 0
    while True:
        page = await changes(client, since=since, limit=3)
        if not page["changes"]:
            break
        revisions = [e["revision"] for e in page["changes"]]
        # A commit is never cut: the next page starts at a new revision.
        assert revisions[-1] == page["next"]
        seen += page["changes"]
        since = page["next"]
    assert seen == everything
    assert len(everything) == 24


async def test_changes_filters_by_kind_and_prefix(client: Client) -> None:
    """kind and prefix narrow the entries; next still moves past the commits left out."""
    await client.post("/counters/a.1/increment")
    await client.put("/items/a.2", json={"value": 1})
    async with client.post("/counters/b.1/increment") as r:
        last = int(r.headers["Lockstep-Revision"])
    body = await changes(client, kind="item")
    assert [e["id"] for e in body["changes"]] == ["a.2"]
    assert body["next"] == last
    body = await changes(client, prefix="a.")
    assert [e.get("name", e.get("id")) for e in body["changes"]] == ["a.1", "a.2"]


@pytest.mark.parametrize(
    "query",
    [
        "since=-1",
        "since=x",
        "since=99999999999999999999",
        "limit=0",
        "kind=both",
        "prefix=a%20b",
        "wait=61",
        "wait=-1",
        "wait=nan",
    ],
)
@never_reaches_storage
async def test_changes_bad_parameters_are_422(client: Client, query: str) -> None:
    """Every parameter is checked before anything is read."""
    async with client.get(f"/changes?{query}") as r:
        await assert_problem(r, 422, "invalid-input")


async def test_changes_since_older_than_the_log_is_410_with_oldest(client: Client) -> None:
    """After a purge, a since below the oldest kept revision is 410 naming it; at it, 200."""
    for _ in range(3):
        await client.post("/counters/a/increment")
    assert await app_of(client)[STORAGE].purge_changes(FUTURE, 2) == 2
    async with client.get("/changes?since=1") as r:
        assert r.status == 410
        assert r.content_type == "application/problem+json"
        body = await r.json()
        assert body["type"] == "urn:lockstep:problem:changes-purged"
        assert body["oldest"] == 3
        assert "LOCKSTEP_CHANGES_RETENTION" in body["detail"]
    page = await changes(client, since=2)
    assert [e["version"] for e in page["changes"]] == [3]
    assert page["oldest"] == 3


async def test_purge_keeps_what_is_younger_than_the_retention(client: Client) -> None:
    """The background purge deletes only entries older than LOCKSTEP_CHANGES_RETENTION."""
    await client.post("/counters/a/increment")
    assert await purge_old_changes(app_of(client)) == 0
    assert len((await changes(client))["changes"]) == 1


async def test_long_poll_answers_when_a_commit_lands(client: Client) -> None:
    """wait=S holds an empty answer until a matching commit arrives, then answers it."""
    async with client.post("/counters/a/increment") as r:
        since = int(r.headers["Lockstep-Revision"])

    async def poll() -> dict[str, Any]:
        return await changes(client, since=since, wait=10, kind="item")

    waiting = asyncio.create_task(poll())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await client.post("/counters/a/increment")  # filtered out: the poll goes on waiting
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await client.put("/items/doc", json={"value": 1})
    body = await asyncio.wait_for(waiting, 5)
    assert [e["id"] for e in body["changes"]] == ["doc"]


async def test_long_poll_with_nothing_new_answers_empty_after_wait(client: Client) -> None:
    """With no commit, the poll answers an empty page once wait seconds have passed."""
    started = time.monotonic()
    body = await changes(client, since=0, wait=0.3)
    assert body["changes"] == [] and body["next"] == 0
    assert 0.3 <= time.monotonic() - started < 3
