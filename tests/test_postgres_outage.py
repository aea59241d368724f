"""Losing the PostgreSQL server: 503 problem bodies while it is gone, recovery when it is back."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app.main import create_app
from tests.conftest import ClientFactory, backend_settings, unavailable

pytestmark = pytest.mark.slow

CLUSTER_ENV = "LOCKSTEP_TEST_POSTGRES_CLUSTER"


def cluster_or_skip() -> list[str]:
    """``[version, name]`` of the test cluster this process may stop and start."""
    cluster = os.environ.get(CLUSTER_ENV, "").split()
    if len(cluster) != 2 or os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        unavailable(f"stopping PostgreSQL needs root, pg_ctlcluster and {CLUSTER_ENV}")
    return cluster


async def pg_ctlcluster(cluster: list[str], action: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster", *cluster, action, *(["-m", "fast"] if action == "stop" else [])
    )
    assert await proc.wait() == 0, f"pg_ctlcluster {action} failed"


async def wait_ready(client: TestClient[Any, Any]) -> None:
    deadline = time.monotonic() + 30
    while True:
        r = await client.get("/readyz")
        if r.status == 200:
            return
        assert time.monotonic() < deadline, "service did not recover after PostgreSQL came back"
        await asyncio.sleep(0.2)


async def test_lost_database_answers_503_and_service_recovers(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """With PostgreSQL stopped every call is a 503 problem; after it starts, service resumes."""
    cluster = cluster_or_skip()
    async with backend_settings("postgres", tmp_path, pg_connect_timeout=2) as settings:
        client = await aiohttp_client(await create_app(settings))
        r = await client.post("/counters/c/increment")
        assert r.status == 200
        await pg_ctlcluster(cluster, "stop")
        try:
            for method, path, body in [
                ("GET", "/readyz", None),
                ("POST", "/counters/c/increment", {"by": 1}),
                ("GET", "/counters/c", None),
                ("PUT", "/items/doc", {"value": 1}),
            ]:
                r = await client.request(method, path, json=body)
                assert r.status == 503, (method, path)
                assert r.content_type == "application/problem+json"
                assert (await r.json())["type"] == "urn:lockstep:problem:storage-unavailable"
                assert r.headers["Retry-After"] == "1"
        finally:
            await pg_ctlcluster(cluster, "start")
        await wait_ready(client)
        r = await client.post("/counters/c/increment")
        assert r.status == 200
        assert (await r.json())["value"] == 2
        r = await client.get("/items/doc")
        assert r.status == 404
