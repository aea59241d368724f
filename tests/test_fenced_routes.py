"""Lockstep-Fence on every write route of the route table: a stale fence is 412 and writes
nothing, so a new write route cannot forget the fence."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from app.routes import ROUTES, Route

Client = TestClient[Any, Any]

# The /locks writes take no fence: renew and release check their own token (If-Match), and
# an acquire writes no data a fence guards (README, Leases).
EXEMPT = {("POST", "/locks/{name}"), ("PUT", "/locks/{name}"), ("DELETE", "/locks/{name}")}
# One request per write route that would change state without its fence: the path to call
# and the body. A write route missing here fails the test until it gets one.
REQUESTS: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/access"): ("/access", None),
    ("POST", "/counters/{name}/increment"): ("/counters/c/increment", {"by": 2}),
    ("PUT", "/counters/{name}"): ("/counters/c", {"value": 9}),
    ("DELETE", "/counters/{name}"): ("/counters/c", None),
    ("PUT", "/items/{id}"): ("/items/r", {"value": {"x": 9}}),
    ("PATCH", "/items/{id}"): ("/items/r", {"x": 9}),
    ("DELETE", "/items/{id}"): ("/items/r", None),
    ("POST", "/txn"): ("/txn", {"then": [{"op": "increment", "counter": "c"}]}),
}


def write_routes() -> list[Route]:
    return [r for r in ROUTES if r.scope == "write" and (r.method, r.path) not in EXEMPT]


async def stored(client: Client) -> list[Any]:
    """Every counter, record and lock, and the change log's last revision."""
    pages = [await client.get(p) for p in ("/counters", "/items", "/locks", "/changes?limit=1")]
    return [await r.json() for r in pages[:3]] + [(await pages[3].json())["next"]]


def test_every_write_route_has_a_fenced_request() -> None:
    """The table below covers exactly the route table's write routes, /locks aside."""
    assert {(r.method, r.path) for r in write_routes()} == set(REQUESTS)


async def test_stale_fence_on_every_write_route_is_412_and_writes_nothing(
    client: Client,
) -> None:
    """Each write route answers a fence whose lease was released and taken again 412
    ``fence-stale``, and counters, records, locks and the change log stay as they were."""
    r = await client.put("/counters/c", json={"value": 1})
    assert r.status == 200
    r = await client.put("/items/r", json={"value": {"x": 1}})
    assert r.status == 201
    r = await client.post("/locks/f", json={"ttl": 60})
    stale = (await r.json())["token"]
    r = await client.delete("/locks/f", headers={"If-Match": f'"{stale}"'})
    assert r.status == 204
    r = await client.post("/locks/f", json={"ttl": 60})
    assert r.status == 201  # held by another token now
    before = await stored(client)
    for route in write_routes():
        path, body = REQUESTS[(route.method, route.path)]
        headers = {"Lockstep-Fence": f"f={stale}", "Content-Type": route.body_media}
        data = None if body is None else json.dumps(body)
        r = await client.request(route.method, path, data=data, headers=headers)
        text = await r.text()
        assert (route.method, route.path, r.status) == (route.method, route.path, 412), text
        assert json.loads(text)["type"] == "urn:lockstep:problem:fence-stale"
    assert await stored(client) == before


async def test_access_counts_with_the_live_fence_only(client: Client) -> None:
    """GET /access with the holder's token counts; with a stale one it is 412 and does not."""
    r = await client.post("/locks/f", json={"ttl": 60})
    token = (await r.json())["token"]
    r = await client.get("/access", headers={"Lockstep-Fence": f"f={token}"})
    assert r.status == 200 and await r.text() == "Resource accessed 1 times."
    r = await client.get("/access", headers={"Lockstep-Fence": f"f={token + 1}"})
    assert r.status == 412
    r = await client.get("/access", headers={"Lockstep-Fence": "f=0"})
    assert r.status == 400
    r = await client.get("/counters/access")
    assert (await r.json())["value"] == 1
