"""Two independent gunicorn instances on one PostgreSQL database, as two hosts would run."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import fresh_postgres_url
from tests.support import Service

pytestmark = pytest.mark.slow

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[list[Service]]:
    """Two gunicorn masters (2 workers each) with their own ports and data dirs, one database."""
    async with fresh_postgres_url() as url:
        env = {"LOCKSTEP_DATABASE_URL": url, "LOCKSTEP_PG_POOL_MAX_SIZE": "4"}
        services = [Service(tmp_path / f"host{i}" / "data", workers=2, env=env) for i in (0, 1)]
        for s in services:
            s.data_dir.parent.mkdir(parents=True)
        try:
            for s in services:
                await asyncio.to_thread(s.start)
            yield services
        finally:
            for s in services:
                if s.proc is not None and s.proc.poll() is None:
                    await asyncio.to_thread(s.quit)


async def access(http: aiohttp.ClientSession, host: Service) -> int | None:
    """The value GET /access handed out, or None if the request failed on the way."""
    try:
        async with http.get(host.url + "/access") as r:
            assert r.status == 200, await r.text()
            return int((await r.text()).split()[2])
    except aiohttp.ClientError:
        return None


async def test_interleaved_load_on_two_hosts_is_exactly_once(hosts: list[Service]) -> None:
    """Increments and PATCHes spread over two hosts: unique values, exact totals, no lost patch."""
    a = hosts[0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        async with http.put(a.url + "/items/doc", json={"value": {}}) as r:
            assert r.status == 201

        async def patch(i: int, host: Service) -> int:
            async with http.patch(
                host.url + "/items/doc", data=f'{{"f{i}": {i}}}', headers=MERGE_PATCH
            ) as r:
                assert r.status == 200
                version: int = (await r.json())["version"]
                return version

        cycle = itertools.cycle(hosts)
        values, versions = await asyncio.gather(
            asyncio.gather(*(access(http, next(cycle)) for _ in range(1000))),
            asyncio.gather(*(patch(i, hosts[i % 2]) for i in range(60))),
        )
        assert sorted(v for v in values if v is not None) == list(range(1, 1001))
        assert sorted(versions) == list(range(2, 62))
        for host in hosts:
            async with http.get(host.url + "/counters/access") as r:
                assert (await r.json())["value"] == 1000
            async with http.get(host.url + "/items/doc") as r:
                body = await r.json()
            assert body["value"] == {f"f{i}": i for i in range(60)}
            assert body["version"] == 61


async def test_killed_host_leaves_the_other_serving_and_totals_adding_up(
    hosts: list[Service],
) -> None:
    """kill -9 of one host mid-load: the other answers every request and no value repeats."""
    a, b = hosts
    done = 0
    killed = asyncio.Event()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def counted(host: Service) -> tuple[Service, int | None]:
            nonlocal done
            value = await access(http, host)
            done += 1
            if done == 300:
                killed.set()
            return host, value

        async def killer() -> None:
            await killed.wait()
            await asyncio.to_thread(a.kill_all)

        results, _ = await asyncio.gather(
            asyncio.gather(*(counted(hosts[i % 2]) for i in range(1200))), killer()
        )
        from_b = [v for h, v in results if h is b]
        from_a = [v for h, v in results if h is a]
        assert None not in from_b, "the surviving host failed requests"
        handed_out = [v for _, v in results if v is not None]
        assert len(handed_out) == len(set(handed_out)), "a value was handed out twice"
        lost_on_a = from_a.count(None)
        assert lost_on_a > 0, "the kill landed after the load had finished"

        async with http.get(b.url + "/counters/access") as r:
            assert r.status == 200
            total = (await r.json())["value"]
        # Requests cut off by the kill may or may not have committed; nothing else is missing.
        assert len(handed_out) <= total <= len(handed_out) + lost_on_a
        assert set(handed_out) <= set(range(1, total + 1))
        async with http.get(b.url + "/access") as r:
            assert await r.text() == f"Resource accessed {total + 1} times."
