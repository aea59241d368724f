"""Handler tests for /healthz and /readyz."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from app.storage import STORAGE
from app.storage.postgres import PostgresStorage
from app.storage.postgres import storage as postgres
from tests.conftest import never_reaches_storage
from tests.views.helpers import Client, app_of, assert_problem


@never_reaches_storage
async def test_healthz_answers_ok(client: Client) -> None:
    """GET /healthz answers 200 {"status": "ok"} while the process runs."""
    async with client.get("/healthz") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == {"status": "ok"}


async def test_readyz_answers_ready_with_database(client: Client) -> None:
    """GET /readyz answers 200 {"status": "ready"} when the database answers."""
    async with client.get("/readyz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ready"}


async def test_readyz_after_shutdown_starts_is_503(client: Client) -> None:
    """Once the app's shutdown has begun, /readyz is a 503 but /healthz still answers 200."""
    await app_of(client).shutdown()
    async with client.get("/readyz") as r:
        await assert_problem(r, 503, "unavailable", "shutting down")
        assert r.headers["Retry-After"] == "1"
    async with client.get("/healthz") as r:
        assert r.status == 200


async def test_readyz_database_error_is_503(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the database refuses queries, /readyz is a 503 problem naming the cause."""
    storage = app_of(client)[STORAGE]
    if isinstance(storage, PostgresStorage):
        # Every connection attempt fails, as when the server's disk or socket is gone.
        def refuse_pg(*args: Any, **kwargs: Any) -> Any:
            raise OSError("disk I/O error")

        monkeypatch.setattr(postgres, "connection", refuse_pg)
    else:
        # Reads reach the reader connection through its batching hop (sqlite_reads).
        reader = storage._reader  # type: ignore[attr-defined]

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(reader, "_hop", refuse)
    async with client.get("/readyz") as r:
        await assert_problem(r, 503, "storage-unavailable", "disk I/O error")
        assert r.headers["Retry-After"] == "1"
    monkeypatch.undo()
    async with client.get("/readyz") as r:
        assert r.status == 200


@never_reaches_storage
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_endpoints_refuse_other_methods(client: Client, path: str) -> None:
    """The operational endpoints answer GET (and HEAD) only; POST is a 405 problem."""
    async with client.post(path) as r:
        await assert_problem(r, 405, "method-not-allowed")
        assert r.headers["Allow"] == "GET, HEAD"
