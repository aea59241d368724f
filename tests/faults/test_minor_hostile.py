"""Two small holes under real gunicorn: a doubled Authorization header, a silent full disk."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import aiohttp
import pytest

from app.tokens import add_token
from tests.faults.test_disk import BIG, limit_file_size
from tests.support import Service

pytestmark = pytest.mark.slow


async def raw_status(port: int, head: str) -> tuple[int, bytes]:
    """Send one request head on a fresh connection; its status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + b"Host: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]


async def test_two_authorization_headers_are_400_in_either_order(tmp_path: Path) -> None:
    """A request carrying a good and a bad token in two Authorization headers is refused with
    400, whichever comes first; with one header the good token works.

    Protection: authorize() refuses a repeated Authorization header. Without it the first
    header wins (200 with the good one first), while a proxy reading the last would disagree.
    """
    tokens = tmp_path / "tokens.json"
    good = add_token(tokens, "ci", "read")
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens)}
    with Service(tmp_path / "data", workers=1, env=env) as service:
        one = f"GET /counters HTTP/1.1\r\nAuthorization: Bearer {good}\r\n"
        assert (await raw_status(service.port, one))[0] == 200
        bad = "Authorization: Bearer lst_not-a-token\r\n"
        for head in (one + bad, "GET /counters HTTP/1.1\r\n" + bad + one.split("\r\n", 1)[1]):
            status, body = await raw_status(service.port, head)
            assert status == 400
            assert b"urn:lockstep:problem:ambiguous-request" in body


async def test_readyz_says_when_writes_fail_for_a_full_disk(tmp_path: Path) -> None:
    """While a full disk fails writes, /readyz stays 200 but names the failure in `writes`;
    after the next successful write it no longer does.

    Protection: the writer remembers a full/I-O/read-only failure until a write succeeds,
    and /readyz reports it. Without it /readyz says only "ready".
    """
    data = tmp_path / "data"
    with Service(data, workers=1) as service:
        async with aiohttp.ClientSession() as http:
            [pid] = service.worker_pids()
            sizes = [p.stat().st_size for p in data.iterdir() if p.is_file()]
            limit_file_size([pid], max(*sizes, service.log_path.stat().st_size) + 64 * 1024)
            try:
                async with http.put(f"{service.url}/items/big", json=BIG) as r:
                    assert r.status == 503
                async with http.get(f"{service.url}/readyz") as r:
                    assert r.status == 200
                    body = await r.json()
                    assert body["status"] == "ready"
                    assert body["writes"].startswith("failing since ")
            finally:
                limit_file_size([pid], resource.RLIM_INFINITY)
            async with http.put(f"{service.url}/items/big", json=BIG) as r:
                assert r.status == 201
            async with http.get(f"{service.url}/readyz") as r:
                assert r.status == 200
                assert await r.json() == {"status": "ready"}
