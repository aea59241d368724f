"""Slow request bodies under real gunicorn: answered 408 and closed in bounded time."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.faults.load import stored
from tests.support import Service

pytestmark = pytest.mark.slow

CONNECTIONS = 50


async def trickle(port: int) -> tuple[bytes, float]:
    """PUT a 100-byte body one byte every 0.2 s; returns what came back and when it ended."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PUT /items/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    received: list[bytes] = []

    async def read_all() -> None:
        while chunk := await reader.read(65536):  # chunks: kept even if a reset follows
            received.append(chunk)

    try:
        async with asyncio.timeout(15):
            read = asyncio.ensure_future(read_all())
            for byte in b'{"value": ' + b"1" * 89 + b"}":
                if read.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)
            await read  # until the server closes the connection
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return b"".join(received), time.monotonic() - started


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_slow_body_gets_408_and_is_closed(tmp_path: Path) -> None:
    """50 connections sending a body at 5 bytes a second each get a 408 problem within
    LOCKSTEP_BODY_TIMEOUT (1 s) plus a little, are closed, store nothing, and leave the
    worker's descriptors as they were.

    Protection: read_body's deadline. Without it each connection is answered only after its
    whole body arrived, 20 s later (the client gives up at 15 s here).
    """
    data = tmp_path / "data"
    with Service(data, workers=1, env={"LOCKSTEP_BODY_TIMEOUT": "1"}) as service:
        [pid] = service.worker_pids()
        files = open_files(pid)
        results = await asyncio.gather(*(trickle(service.port) for _ in range(CONNECTIONS)))
        for answer, took in results:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"urn:lockstep:problem:body-timeout" in answer
            assert took < 4
        for _ in range(50):  # the worker lets go of the closed connections' descriptors
            if open_files(pid) <= files:
                break
            await asyncio.sleep(0.1)
        assert open_files(pid) <= files
    assert stored(data / "lockstep.db", "SELECT id FROM items") == []
