"""Leases (/locks): the pure rules of app.leases, and the API on every backend in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient

import app.views.locks
from app.changes import Change
from app.errors import PreconditionFailed
from app.handovers import HAND_OVERS, HandOvers
from app.leases import (
    ALIVE_S,
    CHECK_IN_S,
    Acquire,
    Acquired,
    Holder,
    LockHeld,
    LockState,
    Poll,
    Queued,
    Release,
    Renew,
    Settle,
    Waiter,
    decide,
    fence_holds,
)
from app.main import create_app
from app.storage import STORAGE
from tests.conftest import ClientFactory, settings_for
from tests.support import wait_for

Client = TestClient[Any, Any]


def waiter(seq: int, alive_until: float = 100.0) -> Waiter:
    return Waiter(seq, f"w{seq}", 30.0, alive_until)


def held(token: int, expires_at: float = 50.0) -> Holder:
    return Holder(token, "h", expires_at, 30.0)


# --- the rules --------------------------------------------------------------------------


def test_acquire_of_a_free_lock_takes_the_next_token() -> None:
    """A free lock is taken at once with the token after the last one ever issued."""
    d = decide(LockState("a", 7), Acquire("me", 10, queue=False), now=1.0)
    assert isinstance(d.outcome, Acquired)
    assert (d.outcome.lease.token, d.outcome.lease.expires_at) == (8, 11.0)
    assert d.entry is not None and d.entry["event"] == "acquired"


def test_acquire_of_a_free_lock_with_live_waiters_queues_behind_them() -> None:
    """A newcomer never jumps the queue: the free lock goes to the first waiter instead."""
    state = LockState("a", 3, None, [waiter(5), waiter(9)])
    d = decide(state, Acquire("me", 10, queue=True), now=1.0)
    assert isinstance(d.outcome, Queued)
    assert d.after.holder is not None and d.after.holder.waiter == 5
    assert d.enqueue is not None


def test_release_hands_the_lock_to_the_first_live_waiter() -> None:
    """Release passes the lock on in the same step, skipping a waiter that stopped checking in."""
    state = LockState("a", 4, held(4), [waiter(2, alive_until=0.5), waiter(3), waiter(6)])
    d = decide(state, Release(4), now=1.0)
    assert d.after.holder is not None
    assert (d.after.holder.token, d.after.holder.waiter) == (5, 3)
    assert sorted(d.removed) == [2, 3]
    assert d.entry == {
        "event": "acquired",
        "token": 5,
        "owner": "w3",
        "expires_at": "1970-01-01T00:00:31.000Z",
        "waiter": 3,
        "ended": {"token": 4, "event": "released"},
    }
    collected = decide(d.after, Poll(3), now=1.5)
    assert isinstance(collected.outcome, Acquired) and collected.outcome.lease.token == 5
    assert fence_holds(collected.after, 5, now=1.5)


def test_a_handed_lease_nobody_collects_lapses_to_the_next_waiter() -> None:
    """A waiter whose worker died does not keep the lock it was handed beyond its check-in."""
    state = LockState("a", 4, held(4), [waiter(3, alive_until=2.0), waiter(6)])
    handed = decide(state, Release(4), now=1.0).after
    assert handed.holder is not None and not fence_holds(handed, 5, now=1.5)
    d = decide(handed, Settle(), now=2.0 + 0.001)
    assert d.after.holder is not None and d.after.holder.waiter == 6
    assert d.entry is not None and d.entry["ended"] == {"token": 5, "event": "expired"}


def test_an_expired_lease_ends_and_goes_to_the_next_waiter() -> None:
    """Expiry by the given clock ends the lease; the next live waiter gets the next token."""
    state = LockState("a", 4, held(4, expires_at=10.0), [waiter(8, alive_until=20.0)])
    assert decide(state, Settle(), now=9.9).entry is None
    d = decide(state, Settle(), now=10.0)
    assert d.after.holder is not None and d.after.holder.token == 5
    assert not fence_holds(d.after, 4, now=10.0)


def test_only_the_holder_renews_or_releases() -> None:
    """Another token is 412 and changes nothing; the holder's renew moves the expiry only."""
    state = LockState("a", 4, held(4))
    for step in (Renew(3, 10), Release(5)):
        d = decide(state, step, now=1.0)
        assert isinstance(d.outcome, PreconditionFailed)
        assert d.entry is None and d.after.holder == state.holder
    d = decide(state, Renew(4, 100), now=1.0)
    assert d.after.holder is not None and d.after.holder.expires_at == 101.0
    assert d.entry is not None and d.entry["event"] == "renewed"


def test_held_lock_without_wait_is_lock_held_with_retry_after() -> None:
    """wait 0 on a held lock: 409 naming the holder, Retry-After its remaining seconds."""
    d = decide(LockState("a", 4, held(4, expires_at=10.2)), Acquire(None, 5, False), now=1.0)
    assert isinstance(d.outcome, LockHeld)
    assert (d.outcome.owner, d.outcome.retry_after) == ("h", 10)


def test_a_waiter_judged_dead_learns_it_on_its_next_poll() -> None:
    """A waiter that missed its check-ins is dropped and told to queue again (seq 0)."""
    state = LockState("a", 4, held(4), [waiter(3, alive_until=1.0)])
    d = decide(state, Poll(3), now=1.0 + ALIVE_S)
    assert isinstance(d.outcome, Queued) and d.outcome.seq == 0


# --- the API, on every backend ----------------------------------------------------------


async def acquire(client: Client, name: str, **body: Any) -> tuple[int, Any]:
    r = await client.post(f"/locks/{name}", json={"ttl": 30, **body})
    return r.status, await r.json()


async def state_of(client: Client) -> list[Any]:
    """Everything a refused request must leave as it was."""
    lock = await client.get("/locks/a")
    counter = await client.get("/counters/c")
    feed = await client.get("/changes?limit=1000")
    return [await lock.json(), await counter.json(), (await feed.json())["next"]]


async def test_acquire_renew_release_round_trip(client: Client) -> None:
    """201 with the token as ETag, GET shows it, PUT renews, DELETE frees it, tokens increase."""
    status, body = await acquire(client, "a", owner="cron")
    assert status == 201
    token = body["token"]
    r = await client.get("/locks/a")
    assert r.status == 200 and r.headers["ETag"] == f'"{token}"'
    assert (await r.json())["owner"] == "cron" and (await r.json())["waiting"] == 0
    r = await client.put("/locks/a", json={"ttl": 600}, headers={"If-Match": f'"{token}"'})
    assert r.status == 200
    assert (await r.json())["expires_at"] > body["expires_at"]
    r = await client.delete("/locks/a", headers={"If-Match": f'"{token}"'})
    assert r.status == 204 and int(r.headers["Lockstep-Revision"]) > body["revision"]
    assert (await client.get("/locks/a")).status == 404
    status, again = await acquire(client, "a")
    assert status == 201 and again["token"] == token + 1
    r = await client.get("/locks?prefix=a")
    assert [i["name"] for i in (await r.json())["items"]] == ["a"]
    r = await client.get("/changes?kind=lock")
    events = [c["value"]["event"] for c in (await r.json())["changes"]]
    assert events == ["acquired", "renewed", "released", "acquired"]


async def test_waiter_gets_the_lock_when_its_holder_releases(client: Client) -> None:
    """A queued acquire returns 201 with the next token as soon as the holder releases."""
    _, first = await acquire(client, "a")
    waiting = asyncio.ensure_future(acquire(client, "a", wait=10, owner="second"))
    await asyncio.sleep(0.2)
    assert (await (await client.get("/locks/a")).json())["waiting"] == 1
    await client.delete("/locks/a", headers={"If-Match": f'"{first["token"]}"'})
    status, second = await waiting
    assert status == 201 and second["token"] == first["token"] + 1
    assert second["owner"] == "second"


async def test_wait_that_runs_out_is_409_and_leaves_no_waiter(client: Client) -> None:
    """A wait that ends with the lock still held is 409 lock-held; its queue entry is gone."""
    await acquire(client, "a", owner="holder")
    r = await client.post("/locks/a", json={"ttl": 5, "wait": 0.3})
    assert r.status == 409 and r.headers["Retry-After"].isdigit()
    body = await r.json()
    assert body["type"].endswith("lock-held") and body["owner"] == "holder"
    assert (await (await client.get("/locks/a")).json())["waiting"] == 0


async def test_waiter_whose_client_hangs_up_leaves_the_queue(client: Client) -> None:
    """A queued acquire whose client disconnects withdraws at its next check-in, so the lock
    is not handed to nobody when its holder releases."""
    _, lease = await acquire(client, "a")
    with pytest.raises(TimeoutError):
        await client.post(
            "/locks/a", json={"ttl": 30, "wait": 30}, timeout=aiohttp.ClientTimeout(total=0.3)
        )

    async def left() -> bool:
        waiting: int = (await (await client.get("/locks/a")).json())["waiting"]
        return waiting == 0

    # Well before it would be judged dead for not checking in (ALIVE_S).
    await wait_for(left, within=ALIVE_S - CHECK_IN_S)
    await client.delete("/locks/a", headers={"If-Match": f'"{lease["token"]}"'})
    assert (await client.get("/locks/a")).status == 404


async def test_fenced_writes_pass_only_with_the_live_token(client: Client) -> None:
    """Lockstep-Fence lets a write through with the holder's token; a stale one is 412."""
    _, lease = await acquire(client, "a")
    token = lease["token"]
    ok = {"Lockstep-Fence": f"a={token}"}
    r = await client.put("/counters/c", json={"value": 5}, headers=ok)
    assert r.status == 200 and r.headers["ETag"] == '"1"'
    r = await client.post("/counters/c/increment", headers=ok)
    assert r.status == 200 and (await r.json())["value"] == 6
    r = await client.put("/items/i", json={"value": {"x": 1}}, headers=ok)
    assert r.status == 201
    stale = {"Lockstep-Fence": f"a={token + 1}"}
    for method, path, body in (
        ("PUT", "/counters/c", {"value": 9}),
        ("DELETE", "/counters/c", None),
        ("PATCH", "/items/i", {"x": 2}),
    ):
        headers = {**stale, "Content-Type": "application/merge-patch+json"}
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status == 412 and (await r.json())["type"].endswith("fence-stale")
    txn = {
        "if": [{"lock": "a", "token": token + 1}],
        "then": [{"op": "set", "counter": "c", "value": 1}],
    }
    r = await client.post("/txn", json=txn)
    assert r.status == 412
    txn["if"] = [{"lock": "a", "token": token}]
    r = await client.post("/txn", json=txn)
    assert r.status == 200 and (await r.json())["succeeded"] is True
    r = await client.get("/counters/c")
    assert (await r.json())["value"] == 1
    r = await client.get("/items/i")
    assert (await r.json())["value"] == {"x": 1}


async def test_fenced_write_with_idempotency_key_replays_its_first_answer(client: Client) -> None:
    """A fenced increment retried with its Idempotency-Key applies once and replays, even
    after the lease ended (the stored answer is replayed, not re-checked)."""
    _, lease = await acquire(client, "a")
    headers = {"Lockstep-Fence": f"a={lease['token']}", "Idempotency-Key": "k1"}
    first = await client.post("/counters/c/increment", headers=headers)
    assert first.status == 200 and (await first.json())["value"] == 1
    await client.delete("/locks/a", headers={"If-Match": f'"{lease["token"]}"'})
    again = await client.post("/counters/c/increment", headers=headers)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    assert (await (await client.get("/counters/c")).json())["value"] == 1


async def test_every_refused_lock_request_changes_nothing(client: Client) -> None:
    """Bad bodies, missing or wrong tokens and malformed or stale fences change no state."""
    _, lease = await acquire(client, "a")
    token = lease["token"]
    await client.put("/counters/c", json={"value": 1})
    before = await state_of(client)
    wrong = {"If-Match": f'"{token + 1}"'}
    refused: list[tuple[str, str, Any, dict[str, str], int]] = [
        ("POST", "/locks/a", {"ttl": 0}, {}, 422),
        ("POST", "/locks/a", {"ttl": 3601}, {}, 422),
        ("POST", "/locks/a", {"ttl": 5, "wait": 61}, {}, 422),
        ("POST", "/locks/a", {"ttl": 5, "owner": "x" * 201}, {}, 422),
        ("POST", "/locks/a", {"ttl": 5, "what": 1}, {}, 422),
        ("POST", "/locks/a", None, {}, 422),
        ("POST", "/locks/a!b", {"ttl": 5}, {}, 422),
        ("POST", "/locks/a", {"ttl": 5}, {}, 409),
        ("PUT", "/locks/a", {"ttl": 5}, {}, 428),
        ("PUT", "/locks/a", {"ttl": 5}, wrong, 412),
        ("PUT", "/locks/a", {"ttl": 0}, {"If-Match": f'"{token}"'}, 422),
        ("DELETE", "/locks/a", None, {}, 428),
        ("DELETE", "/locks/a", None, wrong, 412),
        ("DELETE", "/locks/a", None, {"If-Match": "*"}, 422),
        ("PUT", "/counters/c", {"value": 2}, {"Lockstep-Fence": "a"}, 400),
        ("PUT", "/counters/c", {"value": 2}, {"Lockstep-Fence": "a=0"}, 400),
        ("PUT", "/counters/c", {"value": 2}, {"Lockstep-Fence": "a=1,a=2"}, 400),
        ("PUT", "/counters/c", {"value": 2}, {"Lockstep-Fence": f"a={token + 1}"}, 412),
        ("PUT", "/counters/c", {"value": 2}, {"Lockstep-Fence": f"b={token}"}, 412),
    ]
    for method, path, body, headers, status in refused:
        r = await client.request(method, path, json=body, headers=headers)
        assert (method, path, body, headers, r.status) == (method, path, body, headers, status)
        assert r.content_type == "application/problem+json"
    assert await state_of(client) == before


async def test_lock_events_stream_starts_with_the_holder_then_each_change(
    client: Client,
) -> None:
    """GET /locks/{name}/events: a snapshot of the held lease, then one event per change."""
    _, lease = await acquire(client, "a", owner="me")
    async with client.get("/locks/a/events") as r:
        assert r.status == 200
        snapshot = await _next_event(r)
        assert snapshot["changes"][0]["value"]["token"] == lease["token"]
        await client.delete("/locks/a", headers={"If-Match": f'"{lease["token"]}"'})
        change = await _next_event(r)
    value = change["changes"][0]["value"]
    assert change["changes"][0]["kind"] == "lock"
    assert (value["event"], value["token"], value["owner"]) == ("released", lease["token"], "me")


async def _next_event(response: Any) -> Any:
    import json

    data = None
    async with asyncio.timeout(5):
        while True:
            line = (await response.content.readline()).decode().strip()
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif not line and data is not None:
                return data


@pytest.mark.backends("sqlite")
async def test_lock_routes_are_in_the_openapi_document(client: Client) -> None:
    """OpenAPI covers the lock routes and the fence header (derived from the route table)."""
    doc = await (await client.get("/openapi.json")).json()
    assert set(doc["paths"]["/locks/{name}"]) == {"post", "get", "put", "delete"}
    assert "/locks/{name}/events" in doc["paths"]
    assert "Lockstep-Fence" in doc["components"]["parameters"]


async def test_a_hand_over_wakes_only_the_waiter_it_names() -> None:
    """The hub hands a lock's entry to the worker's waiters; only the one it names wakes."""
    waiters = HandOvers()
    first, second, other = waiters.add("a", 3), waiters.add("a", 6), waiters.add("b", 3)
    entry = {"event": "acquired", "token": 5, "waiter": 6}
    waiters.seen(Change(9, "lock", "a", msgspec.json.encode(entry).decode(), 5, "t"))
    assert (first.is_set(), second.is_set(), other.is_set()) == (False, True, False)
    waiters.close()
    assert first.is_set() and other.is_set()


async def test_a_hand_over_by_another_worker_is_seen_within_the_lock_poll_interval(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter learns of a hand-over it did not see made from its hub's hurried reads."""
    monkeypatch.setattr(app.views.locks, "CHECK_IN_S", 30.0)  # no check-in collects it
    settings = settings_for(tmp_path, events_poll_interval=5, locks_poll_interval=0.01)
    client = await aiohttp_client(await create_app(settings))
    _, first = await acquire(client, "a")
    waiting = asyncio.ensure_future(acquire(client, "a", wait=10, owner="second"))
    await wait_for(lambda: client.app[HAND_OVERS].waiting("a") == 1)
    # Straight to storage, as another worker's release: nothing in this worker wakes it.
    await client.app[STORAGE].lock_step("a", Release(first["token"]))
    async with asyncio.timeout(1):
        status, second = await waiting
    assert status == 201 and second["token"] == first["token"] + 1
