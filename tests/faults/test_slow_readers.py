"""Clients that never read: a worker's memory stays bounded and their connections are closed."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.main import create_app
from tests.conftest import ClientFactory, settings_for
from tests.faults.test_registry_memory import rss_bytes
from tests.support import Service

RECORDS = 40
VALUE = "x" * 500_000  # 40 records of 0.5 MB: 20 MB a stream or a listing
READERS = 6
MB = 1024 * 1024


def non_reader(port: int, path: str) -> socket.socket:
    """A connection that sends one GET and then never reads (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def peak_rss(pid: int, seconds: float) -> int:
    """The worker's largest RSS seen over ``seconds`` (what the clients made it hold)."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_bytes(pid))
        await asyncio.sleep(0.05)
    return peak


async def open_streams(service: Service) -> int:
    """Open event streams right now, from /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{service.url}/metrics") as r:
        text = await r.text()
    found = re.search(r"^lockstep_event_streams (\S+)$", text, re.M)
    return int(float(found[1])) if found else 0


@pytest.mark.slow
async def test_non_reading_clients_leave_worker_memory_bounded(tmp_path: Path) -> None:
    """Six event streams and six listings of 20 MB that are never read grow the worker by
    less than 60 MB, and the streams are closed after LOCKSTEP_SEND_TIMEOUT.

    Protection: streams and listings are written a piece at a time with a deadline
    (app.views.backpressure). Without it each stream queues all its states in one write
    and each listing its whole page, 20 MB a client held as long as the client stays, and
    the streams are never closed.
    """
    env = {"LOCKSTEP_SEND_TIMEOUT": "2", "LOCKSTEP_LOG_LEVEL": "warning"}
    with Service(tmp_path / "data", workers=1, env=env) as service:
        [pid] = service.worker_pids()
        async with aiohttp.ClientSession() as http:
            for i in range(RECORDS):
                async with http.put(f"{service.url}/items/r{i:02d}", json={"value": VALUE}) as r:
                    assert r.status == 201
            async with http.get(f"{service.url}/items", params={"limit": "1000"}) as r:
                assert r.status == 200
                assert len((await r.json())["items"]) == RECORDS  # warms up the listing path
        before = rss_bytes(pid)
        watched = "&".join(f"item=r{i:02d}" for i in range(RECORDS))
        clients = [non_reader(service.port, f"/events?{watched}") for _ in range(READERS)]
        clients += [non_reader(service.port, "/items?limit=1000") for _ in range(READERS)]
        try:
            peak = await peak_rss(pid, 1.5)
            grown = (peak - before) / MB
            print(f"worker RSS {before / MB:.0f} MB, {peak / MB:.0f} MB with non-reading clients")
            assert grown < 60, f"grew by {grown:.0f} MB"
            assert await open_streams(service) == READERS
            for _ in range(150):  # closed after the 2 s send timeout; wait up to 15 s
                if not await open_streams(service):
                    break
                await asyncio.sleep(0.1)
            assert await open_streams(service) == 0
        finally:
            for sock in clients:
                sock.close()


async def test_listing_larger_than_a_piece_is_the_same_page(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A page of large records, sent in pieces, is the same JSON with the same next cursor."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path)))
    value = "v" * 100_000
    for i in range(8):
        assert (await client.put(f"/items/p{i}", json={"value": value})).status == 201
    for limit, expected_next in ((5, "p4"), (8, None), (100, None)):
        resp = await client.get("/items", params={"limit": str(limit)})
        assert resp.status == 200
        page: dict[str, Any] = await resp.json()
        assert [r["id"] for r in page["items"]] == [f"p{i}" for i in range(min(limit, 8))]
        assert all(r["value"] == value for r in page["items"])
        assert page["next"] == expected_next
