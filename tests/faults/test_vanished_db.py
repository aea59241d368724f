"""The database file deleted under a running service: no write is acknowledged, none is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import app.storage.sqlite.reads as sqlite_reads
import app.storage.sqlite.transaction as sqlite_transaction
from app.main import create_app
from tests.conftest import ClientFactory, settings_for
from tests.support import Service, worker_of

PROBLEM = "application/problem+json"


@pytest.mark.slow
async def test_deleted_database_refuses_writes_and_is_never_created_afresh(
    tmp_path: Path,
) -> None:
    """After `rm lockstep.db`, every worker answers writes 503, /readyz 503, and a restarted
    worker stops the service instead of starting an empty database.

    Protection: the writer compares the path's inode with the open file around every
    commit, and the `.created` marker makes a restarting worker open the database without
    creating it. Without the first, writes answer 200 into the unlinked file; without the
    second, the restarted worker creates a fresh, empty lockstep.db.
    """
    data = tmp_path / "data"
    db = data / "lockstep.db"
    service = Service(data, workers=2).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{service.url}/counters/dd", json={"value": 120}) as r:
                assert r.status == 200
            db.unlink()
            seen: set[str] = set()
            for _ in range(40):  # fresh connections until both workers have answered
                async with http.post(
                    f"{service.url}/counters/dd/increment", headers={"Connection": "close"}
                ) as r:
                    assert r.status == 503, await r.text()
                    assert r.content_type == PROBLEM
                    problem = await r.json(content_type=None)
                    assert problem["type"] == "urn:lockstep:problem:database-gone"
                    assert "Retry-After" in r.headers
                    seen.add(worker_of(r.headers["X-Request-ID"]))
                async with http.get(f"{service.url}/readyz", headers={"Connection": "close"}) as r:
                    assert r.status == 503
                if len(seen) == 2:
                    break
            assert len(seen) == 2
        gone = "deleted or replaced while in use"
        lines = [ln for ln in service.log().splitlines() if gone in ln]
        assert 1 <= len(lines) <= 2, lines  # once per worker
        assert "/proc/" in lines[0]
        # A worker that starts now must not create an empty database where one was served.
        os.kill(service.worker_pids()[0], signal.SIGKILL)
        assert service.proc is not None
        assert service.proc.wait(30) != 0  # gunicorn halts: a worker failed to boot
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.kill_all()
    assert not db.exists()
    assert "lockstep.db.created says one was created here" in service.log()


@pytest.mark.slow
def test_missing_database_with_marker_stops_the_start(tmp_path: Path) -> None:
    """A stopped service whose database was deleted refuses to start, in one line that says
    how to start empty; deleting the marker as well starts an empty database."""
    data = tmp_path / "data"
    service = Service(data, workers=1).start()
    service.quit()
    (data / "lockstep.db").unlink()
    with pytest.raises(RuntimeError, match="to start with an empty database"):
        Service(data, workers=1).start()
    assert not (data / "lockstep.db").exists()
    (data / "lockstep.db.created").unlink()
    with Service(data, workers=1):
        assert (data / "lockstep.db").exists()


async def test_not_a_database_error_is_a_503_problem(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's "file is not a database" (a DatabaseError, not an OperationalError) answers
    reads and writes with a 503 problem body, never a 500."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path)))
    damaged = sqlite3.DatabaseError("file is not a database")

    def fail_transaction(conn: sqlite3.Connection, units: Any) -> Any:
        raise damaged

    def fail_queries(conn: sqlite3.Connection, queries: list[Any]) -> list[Any]:
        return [damaged] * len(queries)

    monkeypatch.setattr(sqlite_transaction, "run_transaction", fail_transaction)
    monkeypatch.setattr(sqlite_reads, "_run_queries", fail_queries)
    for method, path in (("PUT", "/counters/c"), ("GET", "/counters/c"), ("GET", "/items")):
        resp = await client.request(method, path, json={"value": 1})
        assert resp.status == 503, await resp.text()
        assert resp.content_type == PROBLEM
        problem = await resp.json(content_type=None)
        assert problem["type"] == "urn:lockstep:problem:storage-unavailable"
        assert "not a database" in problem["detail"]
