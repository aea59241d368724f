"""Transactions under kill -9, against real gunicorn: none half-applied, none acknowledged lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import fresh_postgres_url
from tests.faults.load import Tally, integrity, json_or_none, run_load
from tests.support import Service

pytestmark = pytest.mark.slow

ACCOUNTS = [f"acct-{i:02}" for i in range(20)]
OPENING = 1000
TRANSFERS = 1500


def plan(seed: int) -> list[tuple[str, str, int]]:
    """Random transfers: (source, target, amount)."""
    rng = random.Random(seed)
    transfers = []
    for _ in range(TRANSFERS):
        source, target = rng.sample(ACCOUNTS, 2)
        transfers.append((source, target, rng.randint(1, 300)))
    return transfers


def receipted_transfer(i: int, source: str, target: str, amount: int) -> dict[str, Any]:
    """A transfer that also writes its receipt, so the stored state tells which ones applied."""
    return {
        "if": [{"counter": source, "cmp": ">=", "value": amount}],
        "then": [
            {"op": "increment", "counter": source, "by": -amount},
            {"op": "increment", "counter": target, "by": amount},
            {"op": "put", "item": f"t{i}", "value": [source, target, amount]},
        ],
    }


async def opened(service: Service) -> None:
    body = {"then": [{"op": "set", "counter": a, "value": OPENING} for a in ACCOUNTS]}
    async with aiohttp.ClientSession() as http, http.post(service.url + "/txn", json=body) as r:
        assert r.status == 200


async def listed(http: aiohttp.ClientSession, url: str) -> list[Any]:
    """Every entry of a listing, page after page."""
    entries: list[Any] = []
    after = ""
    while True:
        async with http.get(f"{url}&limit=1000&after={after}") as r:
            assert r.status == 200
            page = await r.json()
        entries += page["items"]
        if page["next"] is None:
            return entries
        after = page["next"]


async def check_books(service: Service, acknowledged: list[int]) -> None:
    """Balances are the opening plus exactly the transfers whose receipts are stored, and every
    acknowledged transfer's receipt is there."""
    async with aiohttp.ClientSession() as http:
        counters = await listed(http, f"{service.url}/counters?prefix=acct-")
        receipts = {r["id"] for r in await listed(http, f"{service.url}/items?prefix=t")}
    balances = {c["name"]: c["value"] for c in counters}
    expected = dict.fromkeys(ACCOUNTS, OPENING)
    for receipt in receipts:
        source, target, amount = TRANSFER_PLAN[int(receipt[1:])]
        expected[source] -= amount
        expected[target] += amount
    assert {f"t{i}" for i in acknowledged} <= receipts
    assert balances == expected
    assert sum(balances.values()) == OPENING * len(ACCOUNTS)
    assert min(balances.values()) >= 0


TRANSFER_PLAN = plan(9)


async def send(service: Service, http: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
    body = receipted_transfer(i, *TRANSFER_PLAN[i])
    async with http.post(service.url + "/txn", json=body) as r:
        return r.status, await json_or_none(r)


def succeeded(tally: Tally) -> list[int]:
    return [i for i, (status, body) in tally.answers.items() if status == 200 and body["succeeded"]]


@pytest.fixture
async def env(backend: str) -> AsyncIterator[dict[str, str]]:
    """The service's environment for a fresh database on ``backend``."""
    if backend == "sqlite":
        yield {}
        return
    async with fresh_postgres_url() as url:
        yield {"LOCKSTEP_DATABASE_URL": url}


async def test_kill_worker_mid_transfers_leaves_no_transfer_half_applied(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """kill -9 of a worker during transfers: each applied wholly or not at all, none lost."""
    with Service(tmp_path / "data", workers=2, env=env) as service:
        await opened(service)
        tally = Tally(threshold=200)
        load = asyncio.create_task(
            run_load(lambda http, i: send(service, http, i), TRANSFERS, 32, tally)
        )
        await tally.answered.wait()
        os.kill(service.worker_pids()[0], signal.SIGKILL)
        await load
        assert set(tally.statuses()) <= {200, 503}, tally.statuses()
        await asyncio.to_thread(service.wait_ready)
        await check_books(service, succeeded(tally))


async def test_kill_whole_service_mid_transfers_keeps_the_books(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """kill -9 of master and workers mid-transfers (on PostgreSQL, of one of two hosts while
    the other serves on): after a restart the total is unchanged, no transfer is
    half-applied, and every acknowledged one is there."""
    data = tmp_path / "data"
    service = Service(data, workers=2, env=env).start()
    others = []
    if env:
        (tmp_path / "other").mkdir()
        others.append(Service(tmp_path / "other" / "data", workers=2, env=env).start())
    hosts = [service, *others]
    try:
        await opened(service)
        tally = Tally(threshold=300)
        load = asyncio.create_task(
            run_load(lambda http, i: send(hosts[i % len(hosts)], http, i), TRANSFERS, 32, tally)
        )
        await tally.answered.wait()
        service.kill_all()
        await load
        if others:  # the other host answered every transfer sent to it
            assert all(i in tally.answers for i in range(1, TRANSFERS, 2))
        if not env:
            assert integrity(data / "lockstep.db") == "ok"
        again = Service(data, workers=2, env=env).start()
        try:
            await check_books(again, succeeded(tally))
        finally:
            again.kill_all()
    finally:
        for other in others:
            other.quit()
