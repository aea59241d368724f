"""Revisions on responses, and counter versions with If-Match / If-None-Match, on both backends."""

from __future__ import annotations

import asyncio

from tests.views.helpers import Client, assert_problem, stored_counter

REVISION = "Lockstep-Revision"


async def test_every_write_names_its_commit_in_increasing_order(client: Client) -> None:
    """Each state-changing answer carries Lockstep-Revision, one higher per commit here."""
    seen = []
    writes = [
        ("GET", "/access", None),
        ("POST", "/counters/a/increment", None),
        ("PUT", "/counters/a", {"value": 5}),
        ("PUT", "/items/doc", {"value": {"k": 1}}),
        ("PATCH", "/items/doc", {"k": 2}),
        ("DELETE", "/items/doc", None),
        ("DELETE", "/counters/a", None),
    ]
    for method, path, body in writes:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with client.request(method, path, json=body, headers=headers) as r:
            assert r.status in (200, 201, 204), await r.text()
            seen.append(int(r.headers[REVISION]))
    assert seen == list(range(seen[0], seen[0] + len(writes)))


async def test_failed_write_and_reads_carry_no_revision(client: Client) -> None:
    """A 4xx changed nothing and names no revision; a read is not a commit."""
    async with client.delete("/counters/ghost") as r:
        await assert_problem(r, 404, "not-found")
        assert REVISION not in r.headers
    async with client.post("/counters/a/increment") as r:
        first = int(r.headers[REVISION])
    async with client.get("/counters/a") as r:
        assert r.status == 200
        assert REVISION not in r.headers
    async with client.post("/counters/a/increment") as r:
        # The failed delete used no revision: the next commit is the next number.
        assert int(r.headers[REVISION]) == first + 1


async def test_counter_version_counts_operations_and_is_its_etag(client: Client) -> None:
    """Every applied increment or set adds 1 to the version, shown in the body and the ETag."""
    async with client.post("/counters/c/increment", json={"by": 10}) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"1"'
        assert await r.json() == {"name": "c", "value": 10, "version": 1}
    async with client.post("/counters/c/increment", json={"by": 0}) as r:
        assert r.headers["ETag"] == '"2"'
    async with client.put("/counters/c", json={"value": 10}) as r:
        assert await r.json() == {"name": "c", "value": 10, "version": 3}
    async with client.get("/counters/c") as r:
        assert r.headers["ETag"] == '"3"'
        assert await r.json() == {"name": "c", "value": 10, "version": 3}


async def test_counter_if_match_mismatch_is_412_and_writes_nothing(client: Client) -> None:
    """PUT, DELETE and increment with a stale If-Match answer 412 and leave the counter as is."""
    async with client.put("/counters/c", json={"value": 1}) as r:
        assert r.headers["ETag"] == '"1"'
    stale = {"If-Match": '"7"'}
    for method, path, body in [
        ("PUT", "/counters/c", {"value": 9}),
        ("DELETE", "/counters/c", None),
        ("POST", "/counters/c/increment", None),
        ("POST", "/counters/c/increment", {"by": 3}),
    ]:
        async with client.request(method, path, json=body, headers=stale) as r:
            await assert_problem(r, 412, "precondition-failed", 'current version ("1")')
            assert REVISION not in r.headers
    async with client.get("/counters/c") as r:
        assert await r.json() == {"name": "c", "value": 1, "version": 1}


async def test_counter_if_match_current_version_applies(client: Client) -> None:
    """The current version in If-Match lets PUT, increment and DELETE through, in turn."""
    await client.put("/counters/c", json={"value": 1})
    async with client.post("/counters/c/increment", headers={"If-Match": '"1"'}) as r:
        assert await r.json() == {"name": "c", "value": 2, "version": 2}
    async with client.put("/counters/c", json={"value": 0}, headers={"If-Match": '"2"'}) as r:
        assert await r.json() == {"name": "c", "value": 0, "version": 3}
    async with client.delete("/counters/c", headers={"If-Match": '"3"'}) as r:
        assert r.status == 204
    assert await stored_counter(client, "c") is None


async def test_counter_if_match_on_absent_counter_is_412(client: Client) -> None:
    """An increment that must match a version does not create the counter."""
    async with client.post("/counters/c/increment", headers={"If-Match": '"1"'}) as r:
        await assert_problem(r, 412, "precondition-failed", "absent")
    assert await stored_counter(client, "c") is None


async def test_counter_put_if_none_match_creates_only(client: Client) -> None:
    """PUT with If-None-Match: * creates an absent counter and refuses an existing one."""
    create = {"If-None-Match": "*"}
    async with client.put("/counters/c", json={"value": 4}, headers=create) as r:
        assert await r.json() == {"name": "c", "value": 4, "version": 1}
    async with client.put("/counters/c", json={"value": 5}, headers=create) as r:
        await assert_problem(r, 412, "precondition-failed", "the counter exists")
    assert await stored_counter(client, "c") == 4


async def test_concurrent_puts_with_one_if_match_one_wins(client: Client) -> None:
    """Twenty PUTs with the same If-Match at once: exactly one 200, the rest 412."""
    await client.put("/counters/c", json={"value": 0})

    async def put(value: int) -> int:
        async with client.put(
            "/counters/c", json={"value": value}, headers={"If-Match": '"1"'}
        ) as r:
            return r.status

    statuses = await asyncio.gather(*(put(v) for v in range(1, 21)))
    assert sorted(statuses) == [200] + [412] * 19
    async with client.get("/counters/c") as r:
        assert (await r.json())["version"] == 2
