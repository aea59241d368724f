"""Idempotency-Key in one process: execute once, replay, refuse reuse, expire and purge."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import app.storage.sqlite.idempotency as sqlite_idempotency
from app.housekeeping import purge_expired_keys
from app.idempotency import IN_FLIGHT, NewKey
from app.locks import LOCKS
from app.main import create_app
from app.settings import Settings
from app.storage.postgres import idempotency as pg_idempotency
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.support import wait_for
from tests.views.helpers import MERGE_PATCH, Client, app_of, assert_problem

KEY = {"Idempotency-Key": "a8098c1a-f86e-11da-bd1a-00112444be1e"}


async def stored_keys(settings: Settings) -> list[tuple[str, int]]:
    """The stored (key, status) rows, read straight from either backend's database."""
    query = "SELECT key, status FROM idempotency ORDER BY key"
    if settings.uses_postgres:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return [(r[0], r[1]) for r in await conn.fetch(query)]
        finally:
            await conn.close()
    with sqlite3.connect(settings.sqlite_path) as db:
        rows = db.execute(query).fetchall()
    db.close()
    return [(k, s) for k, s in rows]


async def counter_value(client: Client, name: str) -> int | None:
    async with client.get(f"/counters/{name}") as r:
        if r.status == 404:
            return None
        assert r.status == 200
        value: int = (await r.json())["value"]
        return value


async def test_increment_with_key_repeated_is_applied_once(
    client: Client, settings: Settings
) -> None:
    """A repeat of a keyed increment replays the stored answer and changes nothing."""
    async with client.post("/counters/c/increment", json={"by": 5}, headers=KEY) as r:
        assert r.status == 200
        assert "Idempotent-Replayed" not in r.headers
        first = await r.read()
    for _ in range(3):
        async with client.post("/counters/c/increment", json={"by": 5}, headers=KEY) as r:
            assert r.status == 200
            assert r.headers["Idempotent-Replayed"] == "true"
            assert r.content_type == "application/json"
            assert await r.read() == first
    assert await counter_value(client, "c") == 5
    assert await stored_keys(settings) == [(KEY["Idempotency-Key"], 200)]


async def test_increment_with_key_and_other_body_is_422(client: Client) -> None:
    """Reusing a key with a different body is refused with 422 and changes nothing."""
    async with client.post("/counters/c/increment", json={"by": 1}, headers=KEY) as r:
        assert r.status == 200
    async with client.post("/counters/c/increment", json={"by": 2}, headers=KEY) as r:
        await assert_problem(r, 422, "idempotency-key-reused")
    assert await counter_value(client, "c") == 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/counters/d/increment", {"by": 1}),
        ("PUT", "/counters/c", {"value": 1}),
        ("DELETE", "/counters/c", None),
    ],
)
async def test_key_reused_on_other_method_or_path_is_422(
    client: Client, method: str, path: str, body: Any
) -> None:
    """Reusing a key on another method or path is 422 and changes nothing."""
    async with client.post("/counters/c/increment", json={"by": 1}, headers=KEY) as r:
        assert r.status == 200
    async with client.request(method, path, json=body, headers=KEY) as r:
        await assert_problem(r, 422, "idempotency-key-reused")
    assert await counter_value(client, "c") == 1
    assert await counter_value(client, "d") is None


async def test_key_repeated_while_first_in_flight_is_409(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A repeat arriving while the first request with its key still runs answers 409."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path)))
    app = app_of(client)
    async with app[LOCKS].hold("counter:c"):
        first = asyncio.create_task(client.post("/counters/c/increment", headers=KEY))
        await wait_for(lambda: len(app[IN_FLIGHT]) > 0)
        async with client.post("/counters/c/increment", headers=KEY) as r:
            await assert_problem(r, 409, "idempotency-key-in-flight")
    async with await first as r:
        assert r.status == 200
        assert await r.json() == {"name": "c", "value": 1, "version": 1}
    assert len(app[IN_FLIGHT]) == 0
    assert await counter_value(client, "c") == 1


async def test_put_item_with_key_replays_201_and_etag(client: Client) -> None:
    """A keyed PUT that created a record replays 201 with the same ETag and body."""
    async with client.put("/items/r", json={"value": {"a": 1}}, headers=KEY) as r:
        assert r.status == 201
        etag, body = r.headers["ETag"], await r.json()
    async with client.put("/items/r", json={"value": {"a": 1}}, headers=KEY) as r:
        assert r.status == 201
        assert r.headers["Idempotent-Replayed"] == "true"
        assert r.headers["ETag"] == etag
        assert await r.json() == body
    async with client.get("/items/r") as r:
        assert (await r.json())["version"] == 1


async def test_patch_with_key_failing_precondition_replays_412(client: Client) -> None:
    """A keyed PATCH that failed its precondition replays the 412, even once it would match."""
    async with client.put("/items/r", json={"value": {}}) as r:
        assert r.status == 201
    headers = {**KEY, **MERGE_PATCH, "If-Match": '"2"'}
    async with client.patch("/items/r", data=b'{"x": 1}', headers=headers) as r:
        await assert_problem(r, 412, "precondition-failed")
    async with client.put("/items/r", json={"value": {}}) as r:
        assert r.status == 200  # now at version 2: the If-Match would hold
    async with client.patch("/items/r", data=b'{"x": 1}', headers=headers) as r:
        await assert_problem(r, 412, "precondition-failed")
        assert r.headers["Idempotent-Replayed"] == "true"
    async with client.get("/items/r") as r:
        assert (await r.json())["value"] == {}


async def test_delete_with_key_repeated_replays_204(client: Client) -> None:
    """A keyed DELETE repeated replays its 204 instead of answering 404."""
    async with client.put("/counters/c", json={"value": 3}) as r:
        assert r.status == 200
    for replayed in (False, True):
        async with client.delete("/counters/c", headers=KEY) as r:
            assert r.status == 204
            assert ("Idempotent-Replayed" in r.headers) is replayed
    assert await counter_value(client, "c") is None


@never_reaches_storage
@pytest.mark.parametrize("key", ["", " ", "x" * 256, "caf\u00e9"])
async def test_invalid_key_is_422_and_changes_nothing(client: Client, key: str) -> None:
    """An empty, overlong or non-ASCII Idempotency-Key is a 422 and nothing is applied."""
    headers = {"Idempotency-Key": key.encode().decode("latin-1")}
    async with client.post("/counters/c/increment", headers=headers) as r:
        await assert_problem(r, 422, "invalid-input", "Idempotency-Key")
    assert await counter_value(client, "c") is None


async def test_key_is_stored_in_the_same_transaction_as_the_change(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When storing the key fails, the change rolls back with it, so a retry applies it once."""

    def broken(*args: Any) -> list[NewKey]:
        raise sqlite3.OperationalError("disk I/O error")

    async def broken_pg(*args: Any) -> None:
        raise OSError("disk I/O error")

    if settings.uses_postgres:
        monkeypatch.setattr(pg_idempotency, "store_keys", broken_pg)
    else:
        monkeypatch.setattr(sqlite_idempotency, "to_store", broken)
    async with client.post("/counters/c/increment", headers=KEY) as r:
        await assert_problem(r, 503, "storage-unavailable")
    assert await counter_value(client, "c") is None
    monkeypatch.undo()
    async with client.post("/counters/c/increment", headers=KEY) as r:
        assert r.status == 200
        assert "Idempotent-Replayed" not in r.headers
    assert await counter_value(client, "c") == 1


async def test_expired_key_executes_again_and_is_purged(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """After its expiry a key runs as new, and the purge deletes expired keys in batches."""
    settings = settings_for(tmp_path, idempotency_ttl=0.2, idempotency_purge_batch=2)
    client = await aiohttp_client(await create_app(settings))
    for i in range(5):
        async with client.post("/counters/c/increment", headers={"Idempotency-Key": f"k{i}"}) as r:
            assert r.status == 200
    with sqlite3.connect(settings.sqlite_path) as db:
        (expiry,) = db.execute("SELECT max(expires_at) FROM idempotency").fetchone()
    db.close()
    await wait_for(lambda: time.time() > expiry)  # every key has expired on the wall clock
    async with client.post("/counters/c/increment", headers={"Idempotency-Key": "k0"}) as r:
        assert r.status == 200
        assert "Idempotent-Replayed" not in r.headers
        assert (await r.json())["value"] == 6
    assert await purge_expired_keys(app_of(client)) == 4
    assert [k for k, _ in await stored_keys(settings)] == ["k0"]


async def test_request_without_key_stores_nothing(client: Client, settings: Settings) -> None:
    """Requests without a key never touch the idempotency table."""
    async with client.post("/counters/c/increment") as r:
        assert r.status == 200
    async with client.get("/access") as r:
        assert r.status == 200
    assert await stored_keys(settings) == []


async def test_background_purge_deletes_expired_keys_while_serving(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """The background task deletes expired keys by itself while requests keep being served."""
    settings = settings_for(tmp_path, idempotency_ttl=0.05, idempotency_purge_interval=0.05)
    client = await aiohttp_client(await create_app(settings))
    for i in range(3):
        async with client.post("/counters/c/increment", headers={"Idempotency-Key": f"k{i}"}) as r:
            assert r.status == 200

    async def purged() -> bool:
        async with client.post("/counters/other/increment") as r:  # requests go on meanwhile
            assert r.status == 200
        return await stored_keys(settings) == []

    await wait_for(purged, step=0.05)
    assert await counter_value(client, "c") == 3
