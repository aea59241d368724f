"""The access log under real gunicorn: one line per request, written soon and never lost on exit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.settings import Settings
from tests.support import Service

pytestmark = pytest.mark.slow

# The timer fires LOCKSTEP_ACCESS_LOG_FLUSH (1 s) after a buffer's first line; this much
# more is allowed for the loop and the machine to get round to it.
FLUSH_INTERVAL = Settings.model_fields["access_log_flush"].default
FLUSH_SLACK = 1.0


def json_access_lines(service: Service) -> dict[str, list[dict[str, Any]]]:
    """Every JSON access line in the service's log by request id; every JSON line must parse."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for text in service.log().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if line["logger"] == "app.access":
                lines.setdefault(line["request_id"], []).append(line)
    return lines


def text_access_lines(service: Service) -> dict[str, list[str]]:
    """Every text access line in the service's log by request id."""
    lines: dict[str, list[str]] = {}
    for text in service.log().splitlines():
        if " app.access request_id=" in text:
            request_id = text.partition(" request_id=")[2].partition(" ")[0]
            lines.setdefault(request_id, []).append(text)
    return lines


async def send(service: Service, ids: list[str], forwarded: bool = False) -> None:
    """One request per id, all at once, on their own connections; each must succeed."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(n: int, request_id: str) -> None:
            headers = {"X-Request-ID": request_id, "User-Agent": f"probe/{n}"}
            if forwarded:
                headers["X-Forwarded-For"] = f"198.51.100.1, 203.0.113.{n % 250}"
            path = "/access" if n % 2 else f"/counters/c{n % 7}/increment"
            async with http.request(
                "GET" if n % 2 else "POST", service.url + path, headers=headers
            ) as r:
                assert r.status == 200

        await asyncio.gather(*(one(n, request_id) for n, request_id in enumerate(ids)))


async def wait_for_lines(service: Service, ids: list[str]) -> None:
    """Poll the log until every id has a line, for at most a flush interval and the slack."""
    limit = FLUSH_INTERVAL + FLUSH_SLACK
    started = time.monotonic()
    while not set(ids) <= json_access_lines(service).keys():
        assert time.monotonic() - started < limit, f"lines missing after {limit} s"
        await asyncio.sleep(0.02)


async def test_every_request_gets_one_json_line_soon(tmp_path: Path) -> None:
    """200 concurrent requests over 2 workers get exactly one parseable JSON line each, with
    every field, written within about a second and without further traffic; a trusted
    proxy's X-Forwarded-For names the client."""
    env = {"LOCKSTEP_LOG_FORMAT": "json", "LOCKSTEP_TRUSTED_PROXIES": "127.0.0.1"}
    with Service(tmp_path / "data", workers=2, env=env) as service:
        ids = [f"burst-{n}" for n in range(200)]
        await send(service, ids, forwarded=True)
        await wait_for_lines(service, ids)
        lines = json_access_lines(service)
        assert all(len(lines[i]) == 1 for i in ids), {
            i: lines[i] for i in ids if len(lines[i]) != 1
        }
        workers = service.worker_pids()
        for n, request_id in enumerate(ids):
            [line] = lines[request_id]
            assert line["client"] == f"203.0.113.{n % 250}", line
            assert line["user_agent"] == f"probe/{n}"
            assert line["status"] == 200 and line["level"] == "info"
            assert line["method"] == ("GET" if n % 2 else "POST")
            assert line["route"] == ("/access" if n % 2 else "/counters/{name}/increment")
            assert line["path"] == ("/access" if n % 2 else f"/counters/c{n % 7}/increment")
            assert line["pid"] in workers
            assert line["time"].endswith("Z")
            assert isinstance(line["latency_ms"], float) and line["lock_wait_ms"] >= 0


async def test_text_lines_ignore_forwarded_for_and_are_written_on_sigterm(
    tmp_path: Path,
) -> None:
    """Without trusted proxies X-Forwarded-For is ignored; the text line has every field; and
    SIGTERM writes the buffered lines before gunicorn exits."""
    # Lines wait up to a minute here: only the shutdown can have written them.
    env = {"LOCKSTEP_ACCESS_LOG_FLUSH": "60"}
    service = Service(tmp_path / "data", workers=1, env=env).start()
    try:
        ids = [f"term-{n}" for n in range(20)]
        await send(service, ids, forwarded=True)
        assert not text_access_lines(service).keys() & set(ids)
    finally:
        assert service.stop() == 0
    lines = text_access_lines(service)
    for n, request_id in enumerate(ids):
        [line] = lines[request_id]
        assert " INFO [" in line and " request client=127.0.0.1 " in line, line
        assert " status=200 latency_ms=" in line and " lock_wait_ms=" in line
        assert line.endswith(f' user_agent="probe/{n}"')
