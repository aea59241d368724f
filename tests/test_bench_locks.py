"""The benchmark's lock workloads: their client against etcd (started by ``bench.stores``) and
against small in-process apps that follow, or break, the lease API; their mutual-exclusion
check; and their rows in the report."""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.lock_clients import TTL, WAIT, EtcdLocks, Held, LockError, LockstepLocks
from bench.locks import ETCD, LOCK_WORKLOADS, CycleTotals, LockResult, LockWorkload, drive
from bench.report import locks_section
from bench.servers import LOCKSTEP
from bench.stores import Etcd, StoreMissing
from tests.conftest import unavailable

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.Response]]
ONE, SPREAD = LOCK_WORKLOADS


def _etcd_keys(url: str, prefix: str) -> list[str]:
    """The keys etcd holds under ``prefix`` (a lock's waiters and holder live there)."""
    start = prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    body = {"key": base64.b64encode(start).decode(), "range_end": base64.b64encode(end).decode()}
    req = urllib.request.Request(f"{url}/v3/kv/range", json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.loads(r.read())
    return [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", [])]


@pytest.mark.slow
async def test_etcd_lock_cycles_hold_and_leave_nothing_behind() -> None:
    """Clients cycling etcd's lock (one contended, then 1,000) complete cycles without overlap
    or errors, and release every lock and lease: no key is left under the locks' names."""
    try:
        etcd = Etcd().__enter__()
    except StoreMissing as e:
        unavailable(f"{e} (scripts/system-deps.sh does it in CI)")
    try:
        for workload in (ONE, SPREAD):
            totals = await drive(lambda s, n: EtcdLocks(s, etcd.url, 60), workload, 4, 0.5)
            assert totals.cycles > 0
            assert len(totals.durations) == totals.cycles
            assert totals.holders.verdict() is None
            assert (totals.errors, totals.gave_up) == (0, 0)
            assert _etcd_keys(etcd.url, workload.prefix) == []
        assert etcd.cpu_seconds() is not None
    finally:
        etcd.__exit__(None, None, None)


class FakeLocks:
    """The lease API's acquire and release over asyncio locks: fair, fenced, one process.

    ``exclusive=False`` grants every acquire at once; ``stale_tokens`` hands out 1 each time.
    """

    def __init__(self, exclusive: bool = True, stale_tokens: bool = False) -> None:
        self.exclusive, self.stale_tokens = exclusive, stale_tokens
        self.locks: dict[str, asyncio.Lock] = {}
        self.holder: dict[str, int] = {}
        self.tokens = itertools.count(1)
        self.bodies: list[dict[str, Any]] = []

    async def acquire(self, request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await request.json()
        self.bodies.append(body)
        lock = self.locks.setdefault(name, asyncio.Lock())
        if self.exclusive:
            try:
                await asyncio.wait_for(lock.acquire(), body["wait"])
            except TimeoutError:
                return web.json_response({"type": "lock-held"}, status=409)
        token = 1 if self.stale_tokens else next(self.tokens)
        self.holder[name] = token
        answer = {"name": name, "token": token, "owner": body["owner"], "revision": token}
        return web.json_response(answer, status=201, headers={"ETag": f'"{token}"'})

    async def release(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if "If-Match" not in request.headers:
            return web.json_response({}, status=428)
        if request.headers["If-Match"] != f'"{self.holder.get(name)}"' and self.exclusive:
            return web.json_response({}, status=412)
        if self.exclusive:
            del self.holder[name]
            self.locks[name].release()
        return web.Response(status=204)

    def app(self, acquire: Handler | None = None) -> web.Application:
        app = web.Application()
        app.router.add_post("/locks/{name}", acquire or self.acquire)
        app.router.add_delete("/locks/{name}", self.release)
        return app


async def _drive_fake(
    aiohttp_server: ServerFactory, fake: FakeLocks, workload: LockWorkload = ONE
) -> CycleTotals:
    server = await aiohttp_server(fake.app())
    url = str(server.make_url("")).rstrip("/")
    return await drive(lambda s, n: LockstepLocks(s, url, f"c{n}"), workload, 8, 0.3)


async def test_lockstep_client_cycles_through_the_lease_api(aiohttp_server: ServerFactory) -> None:
    """The lockstep client acquires with ttl, wait and its owner, releases with the ETag in
    If-Match, and on a lock service that keeps the API sees no overlap and rising tokens."""
    fake = FakeLocks()
    for workload in (ONE, SPREAD):
        totals = await _drive_fake(aiohttp_server, fake, workload)
        assert totals.cycles > 0
        assert totals.holders.verdict() is None
        assert (totals.errors, totals.gave_up) == (0, 0)
    assert {(b["ttl"], b["wait"]) for b in fake.bodies} == {(TTL, WAIT)}
    assert {b["owner"] for b in fake.bodies} == {f"c{n}" for n in range(8)}
    assert fake.holder == {}


async def test_overlapping_holds_fail_the_check(aiohttp_server: ServerFactory) -> None:
    """A lock service that grants a held lock to a second client fails mutual exclusion."""
    totals = await _drive_fake(aiohttp_server, FakeLocks(exclusive=False))
    verdict = totals.holders.verdict()
    assert verdict is not None
    assert "while client" in verdict


async def test_tokens_that_do_not_grow_fail_the_check(aiohttp_server: ServerFactory) -> None:
    """A lock service whose fencing token does not grow from holder to holder fails too."""
    totals = await _drive_fake(aiohttp_server, FakeLocks(stale_tokens=True))
    verdict = totals.holders.verdict()
    assert verdict is not None
    assert "token 1 after token 1" in verdict


async def test_held_answers_and_server_errors_are_retried(aiohttp_server: ServerFactory) -> None:
    """A 409 (still held after wait) or a 503 is counted and the acquire tried again; each cycle
    still ends with a release."""
    fake = FakeLocks()
    answers = itertools.cycle([409, 503, 201])

    async def flaky(request: web.Request) -> web.Response:
        status = next(answers)
        if status == 201:
            return await fake.acquire(request)
        return web.json_response({}, status=status)

    server = await aiohttp_server(fake.app(acquire=flaky))
    url = str(server.make_url("")).rstrip("/")
    totals = await drive(lambda s, n: LockstepLocks(s, url, "c"), ONE, 1, 0.2)
    assert totals.cycles > 0
    assert totals.gave_up >= totals.cycles
    assert totals.errors >= totals.cycles
    assert fake.holder == {}


async def test_a_service_that_only_fails_ends_the_run_at_its_time(
    aiohttp_server: ServerFactory,
) -> None:
    """Acquires that keep failing (5xx) are counted until the run's time is up, then the run
    ends with no cycle, rather than retrying forever."""

    async def unavailable_service(request: web.Request) -> web.Response:
        return web.json_response({}, status=503)

    server = await aiohttp_server(FakeLocks().app(acquire=unavailable_service))
    url = str(server.make_url("")).rstrip("/")
    run = drive(lambda s, n: LockstepLocks(s, url, "c"), ONE, 2, 0.2)
    totals = await asyncio.wait_for(run, 5)
    assert totals.cycles == 0
    assert totals.errors > 0


async def test_a_service_without_the_lease_api_stops_the_workload(
    aiohttp_server: ServerFactory,
) -> None:
    """A 404 to the acquire is an API mismatch: a LockError naming the request and status."""
    server = await aiohttp_server(web.Application())
    url = str(server.make_url("")).rstrip("/")
    with pytest.raises(LockError, match=r"POST /locks/bench-lock-one answered 404"):
        await drive(lambda s, n: LockstepLocks(s, url, "c"), ONE, 2, 0.2)


async def test_a_missing_etag_stops_the_workload(aiohttp_server: ServerFactory) -> None:
    """An acquire answered without the token as its ETag is an API mismatch too."""

    async def no_etag(request: web.Request) -> web.Response:
        return web.json_response({"token": 1}, status=201)

    app = web.Application()
    app.router.add_post("/locks/{name}", no_etag)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    with pytest.raises(LockError, match="ETag None is not the token 1 quoted"):
        async with aiohttp.ClientSession() as session:
            await LockstepLocks(session, url, "c").acquire("x")


def test_locks_section_gives_each_service_its_share_of_etcd() -> None:
    """The report's lock table has a row per service with cycles/s, its share of etcd's and
    the exclusion verdict; a failed check is marked in the row and the header line."""
    result = LockResult("lock-one", "lock acquire→release, 1 contended lock")
    broken = CycleTotals()
    broken.holders.took(1, Held("x", '"1"', 1))
    broken.holders.took(2, Held("x", '"2"', 2))
    rounds = ((900.0, 600.0), (1200.0, 600.0), (1000.0, 400.0), (1000.0, 500.0))
    for lockstep, etcd in rounds:
        result.add(LOCKSTEP, (lockstep, 50.0, 90.0, 300.0), CycleTotals())
        result.add(ETCD, (etcd, 80.0, 120.0, 500.0), broken if etcd == 500.0 else CycleTotals())
    args = argparse.Namespace(connections=16, duration=5.0, rounds=4)
    lines = locks_section([result], ["etcd lock-one round 4: broken"], args)
    assert "expect): **FAILED**: etcd lock-one round 4: broken." in "\n".join(lines)
    # lockstep: a median of 1,000 cycles/s over etcd's 550, and 2.0 by round
    [lockstep_row] = [
        x for x in lines if x.startswith("| lock acquire→release, 1 contended lock | lockstep")
    ]
    cells = [c.strip() for c in lockstep_row.split("|")]
    assert cells[3:6] == ["1,000", "1.82", "2.00"]
    assert cells[-2] == "held"
    [etcd_row] = [x for x in lines if "| etcd's lock" in x]
    assert [c.strip() for c in etcd_row.split("|")][-2] == "FAILED (1 of 4)"
