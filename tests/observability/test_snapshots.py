"""A whole-feed stream's snapshot in pages: bounded events that add up to one revision's state."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp.test_utils import TestClient

from app.events import EVENTS, Subscription, Watch
from app.snapshots import Event
from app.storage import STORAGE
from tests.observability.helpers import read_event

State = dict[tuple[str, str], tuple[Any, int | None]]


async def setup(client: TestClient[Any, Any]) -> None:
    """Seven counters and four records under ``p.``, one counter outside it; pages of 3."""
    client.app[EVENTS].page = 3
    for i in range(7):
        assert (await client.post(f"/counters/p.c{i}/increment")).status == 200
    for i in range(4):
        assert (await client.put(f"/items/p.i{i}", json={"value": {"n": i}})).status == 201
    assert (await client.post("/counters/q.x/increment")).status == 200


async def take(sub: Subscription) -> list[Event]:
    """The next events of a subscription that has something to send."""
    events = await sub.next(5)
    assert events
    return events


def apply(state: State, events: list[Event]) -> None:
    """A client's view: each entry replaces what it held for the resource; null deletes it."""
    for event in events:
        if event.kind == "reset":
            state.clear()
        for c in event.changes:
            if c.value is None:
                state.pop((c.kind, c.key), None)
            else:
                state[(c.kind, c.key)] = (msgspec.json.decode(c.value), c.version)


async def current(client: TestClient[Any, Any]) -> tuple[int, State]:
    """The state under ``p.`` read in one statement, and its revision."""
    whole = await client.app[STORAGE].snapshot(prefix="p.")
    state = {
        (c.kind, c.key): (msgspec.json.decode(c.value or ""), c.version) for c in whole.changes
    }
    return whole.revision, state


async def test_feed_snapshot_in_pages_adds_up_to_the_state_at_its_revision(
    client: TestClient[Any, Any],
) -> None:
    """A prefix stream's snapshot comes in pages of at most the page size, every page but the
    last marked ``more``; with writes landing between pages (to resources already sent, not
    yet sent, and new ones), the pages taken in order are exactly the state at the last
    page's revision, and the stream then goes on live from there.

    Protection: entries written after their resource's page was read are caught up from the
    log (app.snapshots). Without that, the increment and the creation behind the pages
    already sent are lost.
    """
    await setup(client)
    hub = client.app[EVENTS]
    sub = await hub.subscribe(Watch(None, None, "p."), None)
    try:
        events = await take(sub)
        assert [(e.kind, e.more, len(e.changes)) for e in events] == [("snapshot", True, 3)]
        assert [c.key for c in events[0].changes] == ["p.c0", "p.c1", "p.c2"]
        # Behind the page sent: an increment and a new counter; ahead: a delete and a record.
        assert (await client.post("/counters/p.c0/increment")).status == 200
        assert (await client.post("/counters/p.a/increment")).status == 200
        assert (await client.delete("/counters/p.c5")).status == 204
        assert (await client.put("/items/p.i9", json={"value": 9})).status == 201
        while events[-1].kind != "snapshot" or events[-1].more:
            events += await take(sub)
    finally:
        hub.unsubscribe(sub)
    assert all(e.kind == "snapshot" and len(e.changes) <= 3 + 4 for e in events)
    assert len(events) >= 4
    final = events[-1]
    revision, expected = await current(client)
    assert final.revision == revision
    assert all(c.revision == revision for c in final.changes)
    received: State = {}
    apply(received, events)
    assert received == expected
    assert received[("counter", "p.c0")] == (2, 2)
    assert ("counter", "p.a") in received and ("counter", "p.c5") not in received
    assert ("counter", "q.x") not in received


async def test_feed_snapshot_starts_over_after_a_reset_when_the_log_moves_past_it(
    client: TestClient[Any, Any],
) -> None:
    """When the log is purged past a snapshot still being read, the stream sends a reset and
    a whole new snapshot, which is the current state."""
    await setup(client)
    hub = client.app[EVENTS]
    sub = await hub.subscribe(Watch(None, None, "p."), None)
    try:
        events = await take(sub)
        assert (await client.post("/counters/p.c0/increment")).status == 200
        assert await client.app[STORAGE].purge_changes("9999-01-01T00:00:00.000Z", 100) > 0
        while events[-1].kind != "snapshot" or events[-1].more:
            events += await take(sub)
    finally:
        hub.unsubscribe(sub)
    kinds = [e.kind for e in events]
    assert "reset" in kinds
    after_reset = events[kinds.index("reset") :]
    received: State = {}
    apply(received, after_reset)
    revision, expected = await current(client)
    assert received == expected
    assert after_reset[-1].revision == revision


async def test_feed_stream_sends_snapshot_pages_without_ids_then_the_last_with_one(
    client: TestClient[Any, Any],
) -> None:
    """On the wire, a paged snapshot's pages carry ``"more": true`` and no id; the last has
    the id (the resume point) and no ``more``; then changes follow."""
    await setup(client)
    async with client.get("/changes/events?prefix=p.") as r:
        assert r.status == 200
        pages = [await read_event(r.content)]
        while pages[-1][2].get("more"):
            pages.append(await read_event(r.content))
        assert (await client.post("/counters/p.c3/increment")).status == 200
        change = await read_event(r.content)
    assert len(pages) == 4  # 3 + 3 + 3 + the last 2 with the log's first page
    assert all(e == "snapshot" and i is None and d["more"] is True for e, i, d in pages[:-1])
    event, event_id, data = pages[-1]
    assert (event, "more" in data) == ("snapshot", False)
    assert event_id == data["revision"]
    keys = [c.get("name", c.get("id")) for _, _, d in pages for c in d["changes"]]
    assert keys == [f"p.c{i}" for i in range(7)] + [f"p.i{i}" for i in range(4)]
    assert change[0] == "change" and change[1] == (event_id or 0) + 1
