"""gunicorn hosts on one fresh database (two on PostgreSQL share it), for one test or a
whole module, and fresh connections to them.

Its fixtures (``module_hosts``, ``hosts``) reach every test module through ``pytest_plugins``
in ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import fresh_postgres_url
from tests.support import Service


@asynccontextmanager
async def started(tmp_path: Path, backend: str, count: int) -> AsyncIterator[list[Service]]:
    """``count`` gunicorn masters (2 workers each) on one fresh database of ``backend``,
    started together and stopped together (hosts on PostgreSQL migrate one at a time)."""
    async with contextlib.AsyncExitStack() as stack:
        env: dict[str, str] = {}
        if backend == "postgres":
            url = await stack.enter_async_context(fresh_postgres_url())
            env = {"LOCKSTEP_DATABASE_URL": url, "LOCKSTEP_PG_POOL_MAX_SIZE": "4"}
        hosts = [Service(tmp_path / f"host{i}" / "data", 2, env) for i in range(count)]
        for host in hosts:
            host.data_dir.parent.mkdir(parents=True, exist_ok=True)

        async def stop_all() -> None:
            spawned = [h for h in hosts if h.proc is not None]
            await asyncio.gather(*(asyncio.to_thread(h.quit) for h in spawned))

        stack.push_async_callback(stop_all)
        await asyncio.gather(*(asyncio.to_thread(h.start) for h in hosts))
        yield hosts


@asynccontextmanager
async def module_services(
    tmp_path_factory: pytest.TempPathFactory, backend: str, count: int
) -> AsyncIterator[list[Service]]:
    """``count`` hosts on one fresh database of ``backend`` for a whole module, started
    without a tokens file from the developer's shell (as every test's environment is), and
    killed at the end: how they stop plays no part here, and a graceful stop takes a second."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("LOCKSTEP_TOKENS_FILE", raising=False)
        async with started(tmp_path_factory.mktemp(backend), backend, count) as hosts:
            try:
                yield hosts
            finally:
                for host in hosts:
                    if host.proc is not None and host.proc.poll() is None:
                        host.kill_all()


def ready(hosts: list[Service]) -> list[Service]:
    """``hosts``, each serving with all its workers (a test before may have killed a worker,
    which gunicorn replaces, or stopped a host)."""
    for host in hosts:
        assert host.proc is not None
        if host.proc.poll() is not None:
            host.start()
        host.wait_ready()
    return hosts


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_hosts(
    tmp_path_factory: pytest.TempPathFactory, module_backend: str
) -> AsyncIterator[list[Service]]:
    """One service on SQLite; two hosts on one database on PostgreSQL, for a whole module."""
    count = 2 if module_backend == "postgres" else 1
    async with module_services(tmp_path_factory, module_backend, count) as hosts:
        yield hosts


@pytest.fixture
def hosts(module_hosts: list[Service]) -> list[Service]:
    """The module's hosts, each serving with all its workers."""
    return ready(module_hosts)


def fresh_connections() -> aiohttp.ClientSession:
    # A new connection per request, so both workers take part.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
