"""End to end under real gunicorn with 2 workers: exactly-once counting and no lost patches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import Service, worker_of

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with Service(tmp_path / "data", workers=2) as service:
        yield service


async def test_concurrent_access_counts_exactly_once_across_workers(service: Service) -> None:
    """2,000 concurrent GET /access, answered by both workers, hand out 1..2,000, each once."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def hit() -> tuple[int, str, str]:
            async with http.get(service.url + "/access") as r:
                return r.status, await r.text(), worker_of(r.headers["X-Request-ID"])

        answers = await asyncio.gather(*(hit() for _ in range(2000)))
        assert [status for status, _, _ in answers] == [200] * 2000
        # Both workers answered, so the race was between processes, not only inside one
        # (2,000 fresh connections split about evenly; never 2,000 to 0 here).
        assert len({worker for _, _, worker in answers}) == 2
        values = sorted(int(text.split()[2]) for _, text, _ in answers)
        assert values == list(range(1, 2001))
        async with http.get(service.url + "/counters/access") as r:
            assert r.status == 200
            assert (await r.json())["value"] == 2000


async def test_concurrent_patches_to_one_record_all_land(service: Service) -> None:
    """Rounds of 50 concurrent PATCHes to one record, each setting its own field, all survive.

    Rounds repeat (at most 10) until one was answered by both workers, so the race was
    between processes and not only inside one.
    """
    # Fresh connections: a round reusing the last one's would go to the same workers again.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.put(service.url + "/items/doc", json={"value": {}}) as r:
            assert r.status == 201

        async def patch(i: int) -> tuple[int, str]:
            async with http.patch(
                service.url + "/items/doc",
                data=f'{{"f{i}": {i}}}',
                headers={"Content-Type": "application/merge-patch+json"},
            ) as r:
                return r.status, worker_of(r.headers["X-Request-ID"])

        sent = 0
        for _ in range(10):
            answers = await asyncio.gather(*(patch(sent + i) for i in range(50)))
            sent += 50
            assert [status for status, _ in answers] == [200] * 50
            if len({worker for _, worker in answers}) == 2:
                break
        else:
            pytest.fail("no round of 50 concurrent PATCHes reached both workers")
        async with http.get(service.url + "/items/doc") as r:
            assert r.status == 200
            body = await r.json()
        assert body["value"] == {f"f{i}": i for i in range(sent)}
        assert body["version"] == sent + 1
        assert r.headers["ETag"] == f'"{sent + 1}"'


async def test_values_survive_a_restart(tmp_path: Path) -> None:
    """After a stop and a fresh start on the same data dir, every value is still there."""
    data = tmp_path / "data"
    async with aiohttp.ClientSession() as http:
        with Service(data) as first:
            for _ in range(3):
                async with http.get(first.url + "/access") as r:
                    assert r.status == 200
            async with http.put(first.url + "/items/keep", json={"value": [1, 2]}) as r:
                assert r.status == 201
        assert first.proc is not None and first.proc.returncode == 0

        with Service(data) as second:
            async with http.get(second.url + "/access") as r:
                assert await r.text() == "Resource accessed 4 times."
            async with http.get(second.url + "/items/keep") as r:
                assert (await r.json())["value"] == [1, 2]


def test_worker_init_freezes_what_is_imported(tmp_path: Path) -> None:
    """post_worker_init leaves the imported modules out of every later full collection,
    and raises the young generation's threshold (the config says why)."""
    script = (
        "import gc, runpy, types\n"
        "config = runpy.run_path('config/gunicorn.conf.py')\n"
        "before = gc.get_freeze_count(), gc.get_threshold()[0]\n"
        "config['post_worker_init'](types.SimpleNamespace(sockets=[]))\n"
        "print(*before, gc.get_freeze_count(), gc.get_threshold()[0])\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    frozen_before, young_before, frozen_after, young_after = map(int, out)
    assert frozen_before == 0
    assert frozen_after > 10_000
    assert young_before == 700  # CPython's default
    assert young_after == 10_000
