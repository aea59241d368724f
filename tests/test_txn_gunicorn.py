"""POST /txn under real gunicorn with 2 workers (two such hosts on PostgreSQL): invariants,
lock order, combining with plain increments, retries.

One service per backend (one pair of hosts on PostgreSQL) serves every test of the module,
each on counter names of its own.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.hosts import fresh_connections
from tests.support import Service, worker_of

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ACCOUNTS = [f"acct-{i:02}" for i in range(20)]
OPENING = 1000


async def post_txn(
    http: aiohttp.ClientSession, service: Service, body: dict[str, Any], **headers: str
) -> tuple[int, Any, str]:
    """Status, body, and which host's worker answered."""
    async with http.post(service.url + "/txn", json=body, headers=headers) as r:
        worker = f"{service.port}/{worker_of(r.headers['X-Request-ID'])}"
        return r.status, await r.json(content_type=None), worker


def transfer(source: str, target: str, amount: int) -> dict[str, Any]:
    return {
        "if": [{"counter": source, "cmp": ">=", "value": amount}],
        "then": [
            {"op": "increment", "counter": source, "by": -amount},
            {"op": "increment", "counter": target, "by": amount},
        ],
    }


async def all_changes(http: aiohttp.ClientSession, service: Service) -> list[Any]:
    """The whole change feed, page after page."""
    entries: list[Any] = []
    since = 0
    while True:
        async with http.get(f"{service.url}/changes?since={since}&limit=1000") as r:
            assert r.status == 200
            page = await r.json()
        entries += page["changes"]
        if not page["changes"]:
            return entries
        since = page["next"]


async def balances(http: aiohttp.ClientSession, service: Service) -> dict[str, int]:
    async with http.get(service.url + "/counters?prefix=acct-&limit=100") as r:
        assert r.status == 200
        return {c["name"]: c["value"] for c in (await r.json())["items"]}


async def test_bank_transfers_keep_the_total_and_move_each_amount_once(
    hosts: list[Service],
) -> None:
    """8 clients x 500 random transfers over 20 accounts at once: every 200 with
    ``succeeded`` moved its amount exactly once, the total never changes, none goes negative.

    Protection (PostgreSQL): the advisory locks and ``FOR UPDATE`` reads around the
    evaluation; without them the total drifts by thousands in every run at this size."""
    rng = random.Random(27)
    async with fresh_connections() as http:
        opening = {"then": [{"op": "set", "counter": a, "value": OPENING} for a in ACCOUNTS]}
        assert (await post_txn(http, hosts[0], opening))[0] == 200
        moved: Counter[str] = Counter()
        workers: set[str] = set()

        async def client(n: int, plan: list[tuple[str, str, int]]) -> None:
            for source, target, amount in plan:
                status, body, worker = await post_txn(
                    http, hosts[n % len(hosts)], transfer(source, target, amount)
                )
                assert status == 200, body
                workers.add(worker)
                if body["succeeded"]:
                    assert [r["name"] for r in body["results"]] == [source, target]
                    assert body["results"][0]["value"] >= 0
                    moved[source] -= amount
                    moved[target] += amount
                else:
                    assert body["results"] == []

        def one() -> tuple[str, str, int]:
            source, target = rng.sample(ACCOUNTS, 2)
            return source, target, rng.randint(1, 400)

        plans = [[one() for _ in range(500)] for _ in range(8)]
        await asyncio.gather(*(client(n, plan) for n, plan in enumerate(plans)))
        final = await balances(http, hosts[-1])
    assert len(workers) >= 2
    assert sum(final.values()) == OPENING * len(ACCOUNTS)
    assert min(final.values()) >= 0
    assert final == {a: OPENING + moved[a] for a in ACCOUNTS}


async def test_opposite_lock_orders_never_deadlock(hosts: list[Service]) -> None:
    """200 transactions over {a, b} and 200 over {b, a} at once all finish, none with 503."""
    a, b = ({"op": "increment", "counter": name} for name in ("order-a", "order-b"))
    ab, ba = {"then": [a, b]}, {"then": [b, a]}
    async with fresh_connections() as http:
        answers = await asyncio.gather(
            *(post_txn(http, hosts[i // 2 % len(hosts)], ab if i % 2 else ba) for i in range(400))
        )
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == {200: 400}
        assert len({worker for _, _, worker in answers}) >= 2
        async with http.get(hosts[-1].url + "/counters?prefix=order-&limit=10") as r:
            values = {c["name"]: c["value"] for c in (await r.json())["items"]}
    assert values == {"order-a": 400, "order-b": 400}


async def test_combined_increments_and_transactions_each_get_their_own_value(
    hosts: list[Service],
) -> None:
    """2,000 plain increments of ``hot`` concurrent with 200 transactions incrementing ``hot``
    and ``other``: every answer's value of ``hot`` is distinct, ``hot`` ends at 2,200, and
    the change log holds one entry per resource per commit."""
    both = {
        "then": [
            {"op": "increment", "counter": "mix-hot"},
            {"op": "increment", "counter": "mix-other"},
        ]
    }
    async with fresh_connections() as http:

        async def increment(host: Service) -> int:
            async with http.post(host.url + "/counters/mix-hot/increment") as r:
                assert r.status == 200
                value: int = (await r.json())["value"]
                return value

        async def txn(host: Service) -> int:
            status, body, _ = await post_txn(http, host, both)
            assert status == 200, body
            value: int = body["results"][0]["value"]
            return value

        calls = [increment(hosts[i % len(hosts)]) for i in range(2000)]
        calls += [txn(hosts[i % len(hosts)]) for i in range(200)]
        random.Random(26).shuffle(calls)
        values = await asyncio.gather(*calls)
        async with http.get(hosts[-1].url + "/counters?prefix=mix-&limit=10") as r:
            stored = {c["name"]: c["value"] for c in (await r.json())["items"]}
        feed = await all_changes(http, hosts[-1])
    assert sorted(values) == list(range(1, 2201))
    assert stored == {"mix-hot": 2200, "mix-other": 200}
    # One commit, one entry per resource: a transaction and a batch never share a commit
    # on a resource, and hot's entries move its version forward, 2,200 operations in all.
    entries = [(c["revision"], c["kind"], c["name"]) for c in feed]
    assert len(entries) == len(set(entries))
    versions = [c["version"] for c in feed if c["name"] == "mix-hot"]
    assert versions == sorted(versions) and versions[-1] == 2200


async def test_retried_transaction_applies_once_across_a_restart(hosts: list[Service]) -> None:
    """The same Idempotency-Key, on any worker (of either host on PostgreSQL) and after a
    restart, replays the first answer (a failed condition's included); the transaction
    applies once."""
    body = transfer("retry-x", "retry-y", 5)
    body["else"] = [{"op": "set", "counter": "retry-x", "value": 100}]
    key = {"Idempotency-Key": "move-1"}
    async with fresh_connections() as http:
        status, answer, _ = await post_txn(http, hosts[0], body, **key)
        assert (status, answer["succeeded"]) == (200, False)
        again = [await post_txn(http, hosts[i % len(hosts)], body, **key) for i in range(1, 5)]
        assert [a[:2] for a in again] == [(200, answer)] * 4
        for host in hosts:
            await asyncio.to_thread(host.quit)
        for host in hosts:
            await asyncio.to_thread(host.start)
        status, replayed, _ = await post_txn(http, hosts[-1], body, **key)
        assert (status, replayed) == (200, answer)
        status, fresh, _ = await post_txn(http, hosts[0], body, **{"Idempotency-Key": "move-2"})
        assert (status, fresh["succeeded"]) == (200, True)
        async with http.get(hosts[-1].url + "/counters?prefix=retry-&limit=10") as r:
            stored = {c["name"]: c["value"] for c in (await r.json())["items"]}
    assert stored == {"retry-x": 95, "retry-y": 5}
