"""Disk trouble under real gunicorn: a file-size limit makes writes fail; reads go on; it heals."""

from __future__ import annotations

import resource
from pathlib import Path

import aiohttp
import pytest

from tests.faults.load import integrity, stored
from tests.support import Service

pytestmark = pytest.mark.slow

BIG = {"value": "x" * 1_000_000}


def limit_file_size(pids: list[int], limit: int) -> None:
    """What a full disk looks like to SQLite: writes that would grow a file past ``limit`` fail."""
    for pid in pids:
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


async def test_full_disk_answers_503_keeps_reads_and_recovers(tmp_path: Path) -> None:
    """With no room to grow files, writes answer 503 problems, reads work, and it heals by itself.

    Protection: SQLite's I/O errors map to StorageUnavailable (503) and the failed batch is
    rolled back; SIGXFSZ is ignored so the worker survives. Without the mapping the write
    answers 500, without the rollback the next write fails, and with SIGXFSZ at its default
    the worker dies (its pid changes).
    """
    data = tmp_path / "data"
    db = data / "lockstep.db"
    with Service(data, workers=2) as service:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{service.url}/items/keep", json={"value": 1}) as r:
                assert r.status == 201
            pids = service.worker_pids()
            sizes = [p.stat().st_size for p in data.iterdir() if p.is_file()]
            sizes.append(service.log_path.stat().st_size)
            limit_file_size(pids, max(sizes) + 64 * 1024)
            try:
                for _ in range(4):  # new connections: reach both workers
                    async with http.put(
                        f"{service.url}/items/big", json=BIG, headers={"Connection": "close"}
                    ) as r:
                        assert r.status == 503
                        assert r.content_type == "application/problem+json"
                        problem = await r.json(content_type=None)
                        assert problem["type"] == "urn:lockstep:problem:storage-unavailable"
                        assert r.headers["Retry-After"] == "1"
                    async with http.get(f"{service.url}/items/keep") as r:
                        assert r.status == 200
                        assert (await r.json())["value"] == 1
                    async with http.get(f"{service.url}/items/big") as r:
                        assert r.status == 404
            finally:
                limit_file_size(pids, resource.RLIM_INFINITY)
            assert service.worker_pids() == pids
            async with http.put(f"{service.url}/items/big", json=BIG) as r:
                assert r.status == 201
            async with http.get(f"{service.url}/items/big") as r:
                assert r.status == 200
                assert (await r.json())["value"] == BIG["value"]
    assert integrity(db) == "ok"
    assert stored(db, "SELECT id, version FROM items ORDER BY id") == [("big", 1), ("keep", 1)]
