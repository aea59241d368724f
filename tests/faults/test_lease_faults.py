"""Leases under kill -9 and restarts, against real gunicorn with 2 workers, on both backends.

One service per backend serves every test of the module, each on a lock of its own; a
test starts with the service serving on all its workers again after the one before killed
a worker or restarted it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.leases import ALIVE_S, CHECK_IN_S
from tests.hosts import module_services, ready
from tests.observability.workers import serving_worker
from tests.support import Connection, Service, wait_for
from tests.test_leases_gunicorn import connections_on_every_worker, unix

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_service(
    tmp_path_factory: pytest.TempPathFactory, module_backend: str
) -> AsyncIterator[Service]:
    async with module_services(tmp_path_factory, module_backend, 1) as hosts:
        yield hosts[0]


@pytest.fixture
def service(module_service: Service) -> Service:
    return ready([module_service])[0]


async def waiting(conn: Connection, name: str, count: int) -> bool:
    status, _, body = await conn.request("GET", f"/locks/{name}")
    return status == 200 and json.loads(body)["waiting"] >= count


async def test_lease_outlives_a_restart_and_then_passes_on_at_expiry(service: Service) -> None:
    """A lease held across a restart is still held with its token; the next waiter gets it
    once it expires, within ttl + 1 s, never before."""
    conn = await Connection.open(service)
    status, _, body = await conn.request("POST", "/locks/r", b'{"ttl": 4, "owner": "before"}')
    await conn.close()
    assert status == 201
    lease = json.loads(body)
    await asyncio.to_thread(service.quit)
    await asyncio.to_thread(service.start)
    conn = await Connection.open(service)
    try:
        status, _, body = await conn.request("GET", "/locks/r")
        assert status == 200 and json.loads(body)["token"] == lease["token"]
        status, _, body = await conn.request(
            "POST", "/locks/r", b'{"ttl": 30, "wait": 30, "owner": "after"}'
        )
        got = time.time()
        assert status == 201, body
        after = json.loads(body)
        assert after["token"] == lease["token"] + 1
        expiry = unix(lease["expires_at"])
        assert expiry <= got < expiry + 1.0, got - expiry
    finally:
        await conn.close()


@pytest.mark.backends("sqlite")  # the request's side only: both backends take the same path
async def test_waiter_whose_client_hangs_up_leaves_the_queue(service: Service) -> None:
    """Under gunicorn (no handler cancellation) a queued acquire whose client closes its
    connection notices at its next check-in and withdraws."""
    probe = await Connection.open(service)
    client = await Connection.open(service)
    try:
        status, _, _ = await probe.request("POST", "/locks/h", b'{"ttl": 60}')
        assert status == 201
        body = b'{"ttl": 60, "wait": 30}'
        client.writer.write(
            b"POST /locks/h HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

        async def queued() -> bool:
            return await waiting(probe, "h", 1)

        await wait_for(queued, within=10)
        await client.close()

        async def left() -> bool:
            return not await waiting(probe, "h", 1)

        # Well before it would be judged dead for not checking in (ALIVE_S).
        await wait_for(left, within=ALIVE_S - CHECK_IN_S)
    finally:
        await probe.close()
        await client.close()


# Last in the module: a test after it would first wait for gunicorn's replacement worker.
async def test_killed_worker_leaves_no_stuck_waiter(service: Service) -> None:
    """A waiter whose worker is killed -9 is skipped: the waiter behind it gets the lock soon
    after the release (its liveness window), not after the dead one's 60 s ttl."""
    doomed, survivor, spare, probe = await connections_on_every_worker([service], 2)
    await spare.close()
    try:
        status, _, body = await probe.request("POST", "/locks/k", b'{"ttl": 60}')
        assert status == 201
        token = json.loads(body)["token"]
        first = asyncio.create_task(doomed.request("POST", "/locks/k", b'{"ttl": 60, "wait": 60}'))

        async def one_queued() -> bool:
            return await waiting(probe, "k", 1)

        await wait_for(one_queued, within=10)
        second = asyncio.create_task(
            survivor.request("POST", "/locks/k", b'{"ttl": 60, "wait": 30, "owner": "next"}')
        )

        async def both_queued() -> bool:
            return await waiting(probe, "k", 2)

        await wait_for(both_queued, within=10)
        client_port = doomed.writer.get_extra_info("sockname")[1]
        victim = serving_worker(service.worker_pids(), service.port, client_port)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await first
        released = time.monotonic()
        status, _, _ = await probe.request("DELETE", "/locks/k", b"", f'If-Match: "{token}"')
        assert status == 204
        status, _, body = await asyncio.wait_for(second, 30)
        took = time.monotonic() - released
        assert status == 201 and json.loads(body)["owner"] == "next"
        assert took < ALIVE_S + 2 * CHECK_IN_S, took
    finally:
        for conn in (doomed, survivor, probe):
            await conn.close()
