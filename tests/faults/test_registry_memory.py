"""The lock registry under many distinct names, in a real gunicorn worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.load import stored
from tests.support import Service

pytestmark = pytest.mark.slow

CONNECTIONS = 16
DEPTH = 64  # pipelined requests in flight per connection
# Names touched before the first reading, so caches and pools have grown: SQLite's page
# cache (2 MB a connection) fills only after ~15,000 names, each of which writes a counter
# row and a change-log entry with its two index entries.
WARM = 30_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def increment_names(port: int, first: int, count: int) -> int:
    """POST /counters/n<i>/increment for each i, pipelined over raw connections; counts 200s."""
    ok = 0

    async def connection(start: int) -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for base in range(start, first + count, CONNECTIONS * DEPTH):
                chunk = range(base, min(base + DEPTH, first + count))
                writer.write(
                    b"".join(
                        b"POST /counters/n%d/increment HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 0\r\n\r\n" % i
                        for i in chunk
                    )
                )
                for _ in chunk:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                    await reader.readexactly(length)
                    ok += head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(connection(first + c * DEPTH) for c in range(CONNECTIONS)))
    return ok


async def rss_growth(tmp_path: Path, names: int) -> int:
    """Bytes the worker's RSS grows by while ``names`` new counters are incremented once."""
    data = tmp_path / "data"
    with Service(data, workers=1, env={"LOCKSTEP_SYNCHRONOUS": "NORMAL"}) as service:
        (pid,) = service.worker_pids()
        assert await increment_names(service.port, 0, WARM) == WARM
        before = rss_bytes(pid)
        started = time.monotonic()
        assert await increment_names(service.port, WARM, names) == names
        elapsed = time.monotonic() - started
        after = rss_bytes(pid)
        print(f"\n{names} names in {elapsed:.0f} s; RSS {before >> 10} -> {after >> 10} KiB")
    assert stored(data / "lockstep.db", "SELECT count(*) FROM counters") == [(WARM + names,)]
    return after - before


async def test_distinct_names_leave_worker_rss_flat(tmp_path: Path) -> None:
    """Increments of 20,000 distinct counters grow the worker's RSS by less than 1 MB.

    Protection: a lock-registry entry, with its queue, is deleted when its lock is released
    with nobody waiting; keeping one entry per name (a plain dict of locks) costs several MB
    here. The
    million-name version runs under ``make soak``; the in-process twin, tests/test_locks.py,
    asserts the registry is empty.
    """
    assert await rss_growth(tmp_path, 20_000) < 1024 * 1024


@pytest.mark.soak
async def test_million_distinct_names_leave_worker_rss_flat(tmp_path: Path) -> None:
    """Increments of 1,000,000 distinct counters grow the worker's RSS by less than 20 MB."""
    assert await rss_growth(tmp_path, 1_000_000) < 20 * 1024 * 1024
