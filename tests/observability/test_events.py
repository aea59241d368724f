"""Event streams in one process: first state, every committed change, bounds and shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from app.domain import Record
from app.events import EVENTS, EventHub, Resource
from app.main import create_app
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.observability.helpers import next_event
from tests.support import wait_for


async def test_counter_stream_sends_current_value_then_changes(
    client: TestClient[Any, Any],
) -> None:
    """A counter stream starts with the committed value and follows each later commit."""
    assert (await client.post("/counters/c/increment")).status == 200
    async with client.get("/counters/c/events") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        assert "X-Request-ID" in r.headers
        event, data = await next_event(r.content)
        assert (event, data["name"], data["value"]) == ("counter", "c", 1)
        await client.post("/counters/c/increment", json={"by": 4})
        event, data = await next_event(r.content)
        assert (event, data["value"]) == ("counter", 5)
        assert (await client.delete("/counters/c")).status == 204
        event, data = await next_event(r.content)
        assert (event, data["value"]) == ("counter", None)


async def test_item_stream_sends_value_and_version(client: TestClient[Any, Any]) -> None:
    """A record stream reports value, version and update time for a record created later."""
    async with client.get("/items/doc/events") as r:
        assert r.status == 200
        event, first = await next_event(r.content)
        assert (event, first["version"], first["value"]) == ("item", None, None)
        assert (await client.put("/items/doc", json={"value": {"a": 1}})).status == 201
        event, data = await next_event(r.content)
        assert (data["id"], data["value"], data["version"]) == ("doc", {"a": 1}, 1)
        assert data["updated_at"] and data["time"].endswith("Z")


async def test_multi_stream_watches_several_resources(client: TestClient[Any, Any]) -> None:
    """GET /events?counter=..&item=.. sends the first state of each and then their changes."""
    async with client.get("/events?counter=x&counter=y&item=z") as r:
        assert r.status == 200
        first = {(await next_event(r.content))[0] for _ in range(3)}
        assert first == {"counter", "item"}
        await client.post("/counters/y/increment")
        event, data = await next_event(r.content)
        assert (event, data["name"], data["value"]) == ("counter", "y", 1)


@never_reaches_storage
async def test_streams_refuse_bad_names_and_too_many_resources(
    client: TestClient[Any, Any],
) -> None:
    """Invalid names, no resource or more than the limit answer 422 before any stream opens."""
    assert (await client.get("/counters/bad%20name/events")).status == 422
    assert (await client.get("/events")).status == 422
    too_many = "&".join(f"counter=c{i}" for i in range(101))
    r = await client.get(f"/events?{too_many}")
    assert r.status == 422
    assert r.content_type == "application/problem+json"
    assert len(client.app[EVENTS]) == 0


async def test_streams_end_cleanly_on_shutdown(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Closing the app ends open streams with a shutdown event instead of waiting them out."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path)))
    r = await client.get("/counters/s/events")
    assert r.status == 200
    await next_event(r.content)
    await asyncio.wait_for(client.app[EVENTS].close(), 5)
    assert await next_event(r.content) == ("shutdown", {})
    assert await asyncio.wait_for(r.content.read(), 5) == b""
    r.close()


class _FakeStorage:
    """Just enough storage for the hub: a counter value and a change mark."""

    def __init__(self) -> None:
        self.value = 0
        self.mark = 0
        self.changed = asyncio.Event()

    async def get_counter(self, name: str) -> int | None:
        return self.value

    async def get_item(self, item_id: str) -> Record | None:
        return None

    async def wait_for_change(self, mark: int) -> int:
        while self.mark == mark:
            self.changed.clear()
            await self.changed.wait()
        return self.mark

    def commit(self, value: int) -> None:
        self.value = value
        self.mark += 1
        self.changed.set()


async def test_slow_subscriber_holds_only_the_newest_state() -> None:
    """A subscriber that never reads keeps one pending state per resource, the latest one."""
    storage = _FakeStorage()
    hub = EventHub(storage, interval=0.001)  # type: ignore[arg-type]
    r = Resource("counter", "hot")
    slow = await hub.subscribe((r,))
    for value in range(1, 201):
        storage.commit(value)
        # The hub has handed this state on before the next commit: none is coalesced away.
        await wait_for(lambda: slow._pending[r][0]["value"] == value, step=0.001)  # noqa: B023 - awaited here
    assert len(slow._pending) == 1
    changes = await slow.next(1)
    assert changes is not None and [c[1]["value"] for c in changes] == [200]
    hub.unsubscribe(slow)
    await hub.close()
