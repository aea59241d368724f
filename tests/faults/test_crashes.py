"""Crashes and shutdowns under load, against real gunicorn: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults.load import Tally, integrity, json_or_none, run_load, stored
from tests.support import Service

pytestmark = pytest.mark.slow


async def increment(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.post(url) as r:
        return r.status, await json_or_none(r)


def wait_for_workers(service: Service, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = service.worker_pids()
        if len(pids) == count:
            return pids
        time.sleep(0.05)
    raise TimeoutError(f"gunicorn did not get back to {count} workers")


async def test_kill_worker_mid_load_hands_out_distinct_committed_values(tmp_path: Path) -> None:
    """kill -9 of a worker during 1,000 increments: ints distinct, count = 2xx + at most errors.

    Protection: each batch is one BEGIN IMMEDIATE transaction that reads and writes under
    SQLite's write lock, released by the kernel when its holder dies (as is the writer
    turn's flock). With a deferred BEGIN and no writer turn, SQLite refuses the writer whose
    snapshot went stale, so requests fail with 503 rather than get duplicate values
    (tests/storage/test_write_lock.py); without durable commit-before-answer the count
    falls below the number of 200s.
    """
    data = tmp_path / "data"
    with Service(data, workers=2) as service:
        url = service.url + "/counters/hits/increment"
        tally = Tally(threshold=200)
        load = asyncio.create_task(run_load(lambda http, i: increment(http, url), 1000, 50, tally))
        await tally.answered.wait()
        victim = service.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await load
        pids = await asyncio.to_thread(wait_for_workers, service, 2)
        assert victim not in pids
        await asyncio.to_thread(service.wait_ready)
        async with aiohttp.ClientSession() as http:
            status, body = await increment(http, url)
            assert status == 200
        statuses = tally.statuses()
        assert set(statuses) == {200}, statuses
        values = [body["value"] for body in tally.ok()]
        assert len(values) == len(set(values))
        final = body["value"] - 1
        assert len(values) <= final <= len(values) + tally.errors
        assert max(values) <= final
        assert tally.errors < 1000  # the load did run on the surviving worker
    assert integrity(data / "lockstep.db") == "ok"


async def test_kill_whole_service_mid_load_keeps_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    """kill -9 of master and workers mid-load: a restart shows every 2xx-acknowledged write.

    Protection: a 2xx is sent only after COMMIT returned with synchronous=FULL; answering
    before the commit (or committing after answering) loses acknowledged records here.
    """
    data = tmp_path / "data"

    async def put(http: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
        async with http.put(f"{service.url}/items/r{i}", json={"value": i}) as r:
            return r.status, await json_or_none(r)

    service = Service(data, workers=2).start()
    tally = Tally(threshold=300)
    load = asyncio.create_task(run_load(put, 2000, 40, tally))
    await tally.answered.wait()
    service.kill_all()
    await load
    acknowledged = [body["id"] for status, body in tally.answers.values() if status == 201]
    assert len(acknowledged) >= 300
    assert integrity(data / "lockstep.db") == "ok"
    with Service(data, workers=2) as again:
        async with aiohttp.ClientSession() as http:
            for record_id in acknowledged:
                async with http.get(f"{again.url}/items/{record_id}") as r:
                    assert r.status == 200, record_id
                    assert (await r.json())["value"] == int(record_id[1:])
    stored_ids = {row[0] for row in stored(data / "lockstep.db", "SELECT id FROM items")}
    assert set(acknowledged) <= stored_ids
    assert len(stored_ids) <= len(acknowledged) + tally.errors


async def test_sigterm_mid_load_answers_only_committed_work(tmp_path: Path) -> None:
    """SIGTERM during load: every answer is correct, and a restart shows every 2xx's increment.

    Protection: graceful shutdown lets in-flight requests finish and closes the database in
    cleanup, after the last handler; closing it in on_shutdown would fail in-flight requests
    with 5xx or answer 2xx for work that never committed.
    """
    data = tmp_path / "data"
    service = Service(data, workers=2).start()
    url = service.url + "/counters/term/increment"
    tally = Tally(threshold=200)
    load = asyncio.create_task(run_load(lambda http, i: increment(http, url), 1500, 40, tally))
    await tally.answered.wait()
    code = await asyncio.to_thread(service.stop, signal.SIGTERM)
    await load
    assert code == 0
    statuses = tally.statuses()
    assert set(statuses) <= {200, 503}, statuses
    values = [body["value"] for body in tally.ok()]
    assert len(values) == len(set(values))
    log = service.log()
    assert "Traceback" not in log
    assert "ResourceWarning" not in log
    assert integrity(data / "lockstep.db") == "ok"
    with Service(data, workers=2) as again:
        async with aiohttp.ClientSession() as http, http.get(f"{again.url}/counters/term") as r:
            assert r.status == 200
            final = (await r.json())["value"]
    assert max(values) <= final
    assert len(values) <= final <= len(values) + tally.errors
