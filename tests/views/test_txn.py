"""Handler tests for POST /txn: branches, results, all-or-nothing refusals, Idempotency-Key."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from app.locks import LOCKS
from app.main import create_app
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.observability.helpers import read_event
from tests.views.helpers import Client, app_of, assert_problem, stored_counter, stored_item

STOCK_MOVE = {
    "if": [{"counter": "stock", "cmp": ">=", "value": 1}, {"item": "order-1", "exists": False}],
    "then": [
        {"op": "increment", "counter": "stock", "by": -1},
        {"op": "increment", "counter": "sold"},
        {"op": "put", "item": "order-1", "value": {"qty": 1}},
        {"op": "get", "counter": "stock"},
    ],
    "else": [{"op": "get", "counter": "stock"}, {"op": "get", "item": "order-1"}],
}


async def post(client: Client, body: Any, **headers: str) -> tuple[int, Any, dict[str, str]]:
    async with client.post("/txn", json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def state(client: Client) -> tuple[Any, ...]:
    """Everything the tests here write, as stored."""
    names = ("stock", "sold", "a", "b")
    return (
        *[await stored_counter(client, n) for n in names],
        await stored_item(client, "order-1"),
        await stored_item(client, "cfg"),
    )


async def test_txn_applies_then_when_every_condition_holds(client: Client) -> None:
    """A stock move: the conditions hold, every op of then applies, results in op order, and
    every change is one commit: one revision, one change-log entry per resource."""
    async with client.put("/counters/stock", json={"value": 2}) as r:
        assert r.status == 200
        before = int(r.headers["Lockstep-Revision"])
    status, body, headers = await post(client, STOCK_MOVE)
    assert status == 200
    assert body["succeeded"] is True
    assert body["revision"] == int(headers["Lockstep-Revision"]) == before + 1
    stock, sold, order, again = body["results"]
    assert (stock, sold, again) == (
        {"name": "stock", "value": 1, "version": 2},
        {"name": "sold", "value": 1, "version": 1},
        {"name": "stock", "value": 1, "version": 2},
    )
    assert order["id"] == "order-1" and order["value"] == {"qty": 1} and order["version"] == 1
    async with client.get(f"/changes?since={before}") as r:
        changes = (await r.json())["changes"]
    assert sorted((c["revision"], c["kind"], c.get("name") or c["id"]) for c in changes) == [
        (before + 1, "counter", "sold"),
        (before + 1, "counter", "stock"),
        (before + 1, "item", "order-1"),
    ]
    assert await stored_counter(client, "stock") == 1
    assert await stored_counter(client, "sold") == 1
    record = await stored_item(client, "order-1")
    assert record is not None and record.value == {"qty": 1}


async def test_txn_applies_else_when_a_condition_fails(client: Client) -> None:
    """A missing counter compares as absent: the else branch runs and nothing is written."""
    status, body, headers = await post(client, STOCK_MOVE)
    assert status == 200
    assert "Lockstep-Revision" not in headers
    assert body == {
        "succeeded": False,
        "revision": 0,
        "results": [
            {"name": "stock", "value": None, "version": None},
            {"id": "order-1", "value": None, "version": None, "updated_at": None},
        ],
    }
    assert await state(client) == (None,) * 6


async def test_txn_ops_see_earlier_ops_and_delete_answers_deleted(client: Client) -> None:
    """Ops run in order on one state: put then patch then delete of a record, set then get."""
    body = {
        "then": [
            {"op": "put", "item": "cfg", "value": {"size": 1, "keep": True}},
            {"op": "patch", "item": "cfg", "value": {"size": None}},
            {"op": "set", "counter": "a", "value": 7},
            {"op": "delete", "counter": "a"},
            {"op": "get", "counter": "a"},
        ]
    }
    status, answer, _ = await post(client, body)
    assert status == 200
    put, patched, a, deleted, gone = answer["results"]
    assert put["version"] == 1 and patched["version"] == 2
    assert patched["value"] == {"keep": True}
    assert (a, deleted, gone) == (
        {"name": "a", "value": 7, "version": 1},
        {"deleted": True},
        {"name": "a", "value": None, "version": None},
    )
    record = await stored_item(client, "cfg")
    assert record is not None and (record.value, record.version) == ({"keep": True}, 2)
    assert await stored_counter(client, "a") is None


async def test_txn_record_version_condition_guards_a_change_of_two_resources(
    client: Client,
) -> None:
    """A record's version as the condition: the first writer of version 1 wins, the second
    one's else branch shows what it lost to, and an empty transaction changes nothing."""
    async with client.put("/items/cfg", json={"value": {"size": 1}}) as r:
        assert r.status == 201
    body = {
        "if": [{"item": "cfg", "version": 1}],
        "then": [
            {"op": "patch", "item": "cfg", "value": {"size": 2}},
            {"op": "increment", "counter": "a"},
        ],
        "else": [{"op": "get", "item": "cfg"}],
    }
    first = await post(client, body)
    second = await post(client, body)
    assert (first[0], first[1]["succeeded"]) == (200, True)
    assert (second[0], second[1]["succeeded"]) == (200, False)
    assert second[1]["results"][0]["version"] == 2
    assert second[1]["results"][0]["value"] == {"size": 2}
    assert await stored_counter(client, "a") == 1
    assert await post(client, {}) == (200, {"succeeded": True, "revision": 2, "results": []}, ANY)


@pytest.mark.parametrize(
    ("op", "index"),
    [
        ({"op": "increment", "counter": "b", "by": 2**63 - 1}, 1),
        ({"op": "patch", "item": "cfg", "value": {"x": 1}}, 1),
        ({"op": "delete", "counter": "stock"}, 1),
        ({"op": "delete", "item": "order-1"}, 1),
    ],
)
async def test_txn_op_that_cannot_apply_writes_nothing(
    client: Client, op: dict[str, Any], index: int
) -> None:
    """Overflow, patch or delete of something absent: 409 naming the op, earlier ops undone."""
    async with client.put("/counters/b", json={"value": 1}) as r:
        assert r.status == 200
    before = await state(client)
    async with client.post("/txn", json={"then": [{"op": "increment", "counter": "a"}, op]}) as r:
        await assert_problem(r, 409, "txn-conflict", f"then[{index}] cannot apply")
    assert await state(client) == before


TOO_MANY = {"then": [{"op": "increment", "counter": "a"}] * 65}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"then": [{"op": "increment", "counter": "a"}], "also": 1}, "also"),
        ({"then": [{"op": "frobnicate", "counter": "a"}]}, "op"),
        ({"then": [{"op": "increment", "counter": "a b"}]}, "counter"),
        ({"then": [{"op": "increment", "counter": "a", "item": "b"}]}, "exactly one"),
        ({"then": [{"op": "put", "counter": "a", "value": 1}]}, "not put"),
        ({"then": [{"op": "set", "counter": "a", "value": "1"}]}, "64-bit"),
        ({"then": [{"op": "set", "counter": "a", "value": 2**63}]}, "64-bit"),
        ({"then": [{"op": "put", "item": "a"}]}, "needs a value"),
        ({"then": [{"op": "increment", "counter": "a", "surplus": 1}]}, "surplus"),
        ({"if": [{"counter": "a", "cmp": ">", "value": 1, "exists": True}]}, "exactly one"),
        ({"if": [{"counter": "a", "cmp": "~", "value": 1}]}, "cmp"),
        ({"if": [{"counter": "a", "cmp": ">"}]}, "go together"),
        ({"if": [{"item": "a", "cmp": "==", "value": 1}]}, "records take version"),
        (TOO_MANY, "LOCKSTEP_TXN_MAX_OPS"),
        ([1, 2], "Expected `object`"),
    ],
)
@never_reaches_storage
async def test_txn_malformed_body_is_refused_before_anything(
    client: Client, body: Any, detail: str
) -> None:
    """Unknown fields or ops, bad names, wrong combinations, too many ops: 422, nothing written."""
    valid_then = {"then": [{"op": "increment", "counter": "a"}]}
    payload = {**valid_then, **body} if isinstance(body, dict) and "then" not in body else body
    async with client.post("/txn", json=payload) as r:
        await assert_problem(r, 422, "invalid-input", detail)
    assert await state(client) == (None,) * 6


async def test_txn_limit_counts_conditions_and_operations(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """LOCKSTEP_TXN_MAX_OPS bounds conditions plus operations: at the limit it applies."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, txn_max_ops=3)))
    body: dict[str, Any] = {
        "if": [{"counter": "a", "exists": False}],
        "then": [{"op": "increment", "counter": "a"}] * 2,
    }
    status, _, _ = await post(client, body)
    assert status == 200
    body["else"] = [{"op": "get", "counter": "a"}]
    async with client.post("/txn", json=body) as r:
        await assert_problem(r, 422, "invalid-input", "the limit is 3")
    assert await stored_counter(client, "a") == 2


async def test_txn_with_idempotency_key_applies_once_and_replays(client: Client) -> None:
    """A retried transaction (same key, same body) applies once; the repeat replays its answer."""
    body = {"then": [{"op": "increment", "counter": "a", "by": 5}]}
    first = await post(client, body, **{"Idempotency-Key": "t-1"})
    again = await post(client, body, **{"Idempotency-Key": "t-1"})
    assert first[0] == again[0] == 200
    assert (
        first[1]
        == again[1]
        == {
            "succeeded": True,
            "revision": 1,
            "results": [{"name": "a", "value": 5, "version": 1}],
        }
    )
    assert "Idempotent-Replayed" not in first[2]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert await stored_counter(client, "a") == 5
    other = {"then": [{"op": "increment", "counter": "a", "by": 6}]}
    async with client.post("/txn", json=other, headers={"Idempotency-Key": "t-1"}) as r:
        await assert_problem(r, 422, "idempotency-key-reused")
    assert await stored_counter(client, "a") == 5


async def test_txn_conflict_is_replayed_for_its_key(client: Client) -> None:
    """A 409 is the transaction's answer too: the retry replays it, even once it could apply."""
    body = {"then": [{"op": "delete", "counter": "a"}]}
    async with client.post("/txn", json=body, headers={"Idempotency-Key": "t-2"}) as r:
        await assert_problem(r, 409, "txn-conflict")
    async with client.put("/counters/a", json={"value": 1}) as r:
        assert r.status == 200
    async with client.post("/txn", json=body, headers={"Idempotency-Key": "t-2"}) as r:
        await assert_problem(r, 409, "txn-conflict")
        assert r.headers["Idempotent-Replayed"] == "true"
    assert await stored_counter(client, "a") == 1


async def test_txn_lock_not_had_in_time_is_503_and_writes_nothing(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A resource held past LOCKSTEP_LOCK_TIMEOUT: 503 with Retry-After, and nothing written."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, lock_timeout=0.2)))
    body = {"then": [{"op": "increment", "counter": "a"}, {"op": "increment", "counter": "b"}]}
    async with app_of(client)[LOCKS].hold("counter:b"), client.post("/txn", json=body) as r:
        await assert_problem(r, 503, "lock-timeout", "counter:b")
        assert r.headers["Retry-After"]
    assert await state(client) == (None,) * 6
    assert len(app_of(client)[LOCKS]) == 0


async def test_txn_is_one_event_on_a_stream_watching_its_resources(client: Client) -> None:
    """A stream over the transaction's resources gets one event: its revision, every entry."""
    async with client.get("/events?counter=a&counter=b&item=cfg") as r:
        assert r.status == 200
        event, _, _ = await read_event(r.content)
        assert event == "snapshot"
        body = {
            "then": [
                {"op": "increment", "counter": "a", "by": 3},
                {"op": "set", "counter": "b", "value": 4},
                {"op": "put", "item": "cfg", "value": {"on": True}},
            ]
        }
        status, answer, _ = await post(client, body)
        assert status == 200
        event, event_id, data = await read_event(r.content)
    assert (event, event_id, data["revision"]) == ("change", answer["revision"], answer["revision"])
    assert sorted((c["kind"], c.get("name") or c["id"], c["value"]) for c in data["changes"]) == [
        ("counter", "a", 3),
        ("counter", "b", 4),
        ("item", "cfg", {"on": True}),
    ]
