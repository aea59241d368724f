"""Event streams in one process: snapshot, every commit, resume, reset, bounds and shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from app.events import EVENTS, Watch
from app.main import create_app
from app.settings import Settings
from app.snapshots import Event
from app.storage import STORAGE
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.observability.helpers import next_event, read_event
from tests.support import wait_for


async def test_counter_stream_sends_a_snapshot_then_every_commit(
    client: TestClient[Any, Any],
) -> None:
    """A counter stream starts with a snapshot at its revision, then one event per commit."""
    r0 = await client.post("/counters/c/increment")
    revision = int(r0.headers["Lockstep-Revision"])
    async with client.get("/counters/c/events") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        assert "X-Request-ID" in r.headers
        event, event_id, data = await read_event(r.content)
        assert (event, event_id) == ("snapshot", revision)
        [entry] = data["changes"]
        assert data["revision"] == revision
        assert (entry["kind"], entry["name"], entry["value"], entry["version"]) == (
            "counter",
            "c",
            1,
            1,
        )
        # Changes that end on the same value are each sent: none is coalesced away.
        for body in ({"by": 4}, {"by": -4}):
            await client.post("/counters/c/increment", json=body)
        await client.delete("/counters/c")
        seen = [await read_event(r.content) for _ in range(3)]
    assert [e for e, _, _ in seen] == ["change"] * 3
    assert [i for _, i, _ in seen] == [revision + 1, revision + 2, revision + 3]
    entries = [d["changes"] for _, _, d in seen]
    assert [(c["value"], c["version"]) for [c] in entries] == [(5, 2), (1, 3), (None, None)]
    assert all(d["revision"] == i for _, i, d in seen)


async def test_item_stream_snapshot_of_an_absent_record_then_its_creation(
    client: TestClient[Any, Any],
) -> None:
    """A record stream's snapshot shows an absent record as null; its creation follows."""
    async with client.get("/items/doc/events") as r:
        assert r.status == 200
        event, _, first = await read_event(r.content)
        assert event == "snapshot"
        assert [(c["id"], c["value"], c["version"]) for c in first["changes"]] == [
            ("doc", None, None)
        ]
        assert (await client.put("/items/doc", json={"value": {"a": 1}})).status == 201
        event, _, data = await read_event(r.content)
        [entry] = data["changes"]
        assert (event, entry["id"], entry["value"], entry["version"]) == (
            "change",
            "doc",
            {"a": 1},
            1,
        )
        assert entry["time"].endswith("Z")


async def test_stream_resumes_after_last_event_id_without_loss_or_repeat(
    client: TestClient[Any, Any],
) -> None:
    """Reconnecting with Last-Event-ID sends exactly the commits after it, then continues live."""
    async with client.get("/counters/c/events") as r:
        _, start, _ = await read_event(r.content)
    for _ in range(3):
        await client.post("/counters/c/increment")
    await client.post("/counters/other/increment")  # not watched: not sent
    headers = {"Last-Event-ID": str(start)}
    async with client.get("/counters/c/events", headers=headers) as r:
        caught_up = [await read_event(r.content) for _ in range(3)]
        await client.post("/counters/c/increment")
        seen = [*caught_up, await read_event(r.content)]
    assert [e for e, _, _ in seen] == ["change"] * 4
    assert [d["changes"][0]["version"] for _, _, d in seen] == [1, 2, 3, 4]
    ids = [i or 0 for _, i, _ in seen]
    assert ids == sorted(set(ids)) and ids[0] > (start or 0)


async def test_stream_resume_older_than_the_log_resets_then_snapshots(
    client: TestClient[Any, Any],
) -> None:
    """A resume point the purge has passed gets event: reset with the oldest revision kept."""
    for _ in range(3):
        await client.post("/counters/c/increment")
    assert await client.app[STORAGE].purge_changes("9999-01-01T00:00:00.000Z", 100) == 3
    async with client.get("/counters/c/events?since=1") as r:
        event, event_id, data = await read_event(r.content)
        assert (event, event_id, data) == ("reset", None, {"oldest": 4})
        event, event_id, data = await read_event(r.content)
        assert (event, event_id) == ("snapshot", 3)
        assert data["changes"][0]["value"] == 3


async def test_feed_stream_follows_a_prefix_of_the_whole_feed(
    client: TestClient[Any, Any],
) -> None:
    """GET /changes/events?prefix= sends every commit touching a name with the prefix."""
    async with client.get("/changes/events?prefix=a.&since=0") as r:
        await client.post("/counters/a.1/increment")
        await client.post("/counters/b.1/increment")
        await client.put("/items/a.2", json={"value": 1})
        first = await read_event(r.content)
        second = await read_event(r.content)
    assert [c["name"] for c in first[2]["changes"]] == ["a.1"]
    assert [c["id"] for c in second[2]["changes"]] == ["a.2"]
    assert second[1] == (first[1] or 0) + 2  # b.1's commit went by, unsent


async def test_multi_stream_watches_several_resources(client: TestClient[Any, Any]) -> None:
    """GET /events?counter=..&item=.. snapshots each, then sends their changes."""
    async with client.get("/events?counter=x&counter=y&item=z") as r:
        assert r.status == 200
        event, _, data = await read_event(r.content)
        assert event == "snapshot"
        assert [(c["kind"], c.get("name", c.get("id"))) for c in data["changes"]] == [
            ("counter", "x"),
            ("counter", "y"),
            ("item", "z"),
        ]
        await client.post("/counters/y/increment")
        event, _, data = await read_event(r.content)
        assert (event, data["changes"][0]["name"], data["changes"][0]["value"]) == (
            "change",
            "y",
            1,
        )


@never_reaches_storage
async def test_streams_refuse_bad_names_and_too_many_resources(
    client: TestClient[Any, Any],
) -> None:
    """Invalid names, no resource or more than the limit answer 422 before any stream opens."""
    assert (await client.get("/counters/bad%20name/events")).status == 422
    assert (await client.get("/events")).status == 422
    assert (await client.get("/counters/c/events?since=x")).status == 422
    assert (await client.get("/counters/c/events", headers={"Last-Event-ID": "-1"})).status == 422
    assert (await client.get("/changes/events?kind=both")).status == 422
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


async def test_slow_reader_holds_a_bounded_backlog_and_still_misses_nothing(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """A live subscription whose client takes nothing while 30 commits land holds at most
    LOCKSTEP_EVENTS_MAX_PENDING entries, then catches up from the log: every commit once, in
    order, and live again after.

    Protection: Subscription.offer lets go of its queue past max_pending (app.events).
    Without it the queue holds all 30 commits, however far behind the client is.
    """
    bounded = settings.model_copy(update={"events_max_pending": 5})
    client = await aiohttp_client(await create_app(bounded))
    hub, storage = client.app[EVENTS], client.app[STORAGE]
    sub = await hub.subscribe(Watch(frozenset({("counter", "c")})), None)
    try:
        [snapshot] = await sub.next(1) or []
        assert (snapshot.kind, snapshot.revision) == ("snapshot", 0)
        assert sub.live
        for _ in range(30):
            assert (await client.post("/counters/c/increment")).status == 200
        last, _ = await storage.feed()
        await wait_for(lambda: (hub.position or 0) >= last)
        assert sub.pending <= 5
        received: list[Event] = []
        while not received or received[-1].revision < last:
            received += await sub.next(1) or []
        assert [e.kind for e in received] == ["change"] * 30
        assert [e.revision for e in received] == list(range(1, 31))
        assert [e.changes[0].version for e in received] == list(range(1, 31))
        assert sub.live
    finally:
        hub.unsubscribe(sub)
