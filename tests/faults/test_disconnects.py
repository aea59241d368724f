"""Clients that vanish and shutdowns that overlap requests, against real gunicorn (and the
shutdown order in one process, where a request can be held in flight at will)."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
from pathlib import Path

import aiohttp
import pytest

from app.locks import LOCKS
from tests.faults.load import integrity, stored
from tests.observability.workers import last_heartbeat, listening, read_everything_sent
from tests.support import Service, wait_for
from tests.views.helpers import Client, app_of, stored_counter

pytestmark = pytest.mark.slow


async def send_and_abort(port: int, request: bytes) -> None:
    """Send ``request`` and reset the connection at once, without reading any answer."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    writer.close()
    await writer.wait_closed()


async def test_client_disconnects_leave_no_partial_writes_or_stuck_locks(tmp_path: Path) -> None:
    """Aborted half-sent bodies write nothing; aborted whole requests apply whole or not at all.

    Protection: a body is parsed only once complete, and a request's op is either withdrawn
    from the combiner before its batch or committed with it; a lock left held by an aborted
    request would make the follow-up requests on the same resources answer 503 lock-timeout.
    """
    data = tmp_path / "data"
    env = {"LOCKSTEP_LOCK_TIMEOUT": "2"}
    with Service(data, workers=2, env=env) as service:
        half = [
            send_and_abort(
                service.port,
                f"PUT /items/half{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f'Content-Length: 100\r\n\r\n{{"value": '.encode(),
            )
            for i in range(50)
        ]
        whole = [
            send_and_abort(
                service.port,
                b"POST /counters/gone/increment HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            )
            for _ in range(200)
        ]
        await asyncio.gather(*half, *whole)
        async with aiohttp.ClientSession() as http:
            for i in range(50):
                async with http.get(f"{service.url}/items/half{i}") as r:
                    assert r.status == 404
            # Aborted increments that reached a handler still finish: wait until they did.
            before, previous = -1, -2
            while before != previous:
                previous = before
                await asyncio.sleep(0.3)
                async with http.get(f"{service.url}/counters/gone") as r:
                    before = (await r.json())["value"] if r.status == 200 else 0
            assert 0 <= before <= 200

            async def increment() -> int:
                async with http.post(f"{service.url}/counters/gone/increment") as r:
                    assert r.status == 200
                    value: int = (await r.json())["value"]
                    return value

            values = await asyncio.gather(*(increment() for _ in range(50)))
            assert sorted(values) == list(range(before + 1, before + 51))
            async with http.put(f"{service.url}/items/half0", json={"value": 1}) as r:
                assert r.status == 201
    assert integrity(data / "lockstep.db") == "ok"
    assert stored(data / "lockstep.db", "SELECT id FROM items") == [("half0",)]


async def test_sigterm_lets_in_flight_request_finish_and_commit(tmp_path: Path) -> None:
    """A request still uploading its body when SIGTERM arrives is answered 201 and committed,
    and the worker then exits cleanly.

    The rest of the body arrives before the worker begins its graceful shutdown (it notices
    SIGTERM within a second): from then on aiohttp reads no more request bytes. That
    shutdown's order is pinned in process by the next test.
    """
    data = tmp_path / "data"
    service = Service(data, workers=1).start()
    body = b'{"value": "late"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(
        b"PUT /items/late HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:5])
    )
    await writer.drain()
    client_port = writer.get_extra_info("sockname")[1]
    # The worker has read the head and the first bytes: its handler waits for the rest.
    [worker] = service.worker_pids()
    await wait_for(lambda: read_everything_sent([worker], service.port, client_port))
    # Signalled right after a heartbeat, the worker begins its shutdown a second later.
    beat = last_heartbeat(worker)
    await wait_for(lambda: last_heartbeat(worker) != beat)
    service.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await wait_for(lambda: "Handling signal: term" in service.log())
    assert listening(service.port)  # the worker has not begun its shutdown yet
    writer.write(body[5:])
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 201")
    assert await asyncio.to_thread(service.stop) == 0
    assert "ResourceWarning" not in service.log()
    assert "Traceback" not in service.log()
    assert stored(data / "lockstep.db", "SELECT id, value FROM items") == [("late", '"late"')]


async def test_request_in_flight_when_shutdown_begins_still_commits(client: Client) -> None:
    """An increment still waiting for its lock when the app's shutdown begins is answered 200
    and committed.

    Protection: storage is closed in cleanup, after in-flight handlers finished; closed in
    on_shutdown, this request answers 503 and writes nothing.
    """
    app = app_of(client)
    async with app[LOCKS].hold("counter:late"):
        pending = asyncio.ensure_future(client.post("/counters/late/increment"))
        await wait_for(lambda: app[LOCKS].waiting() == 1)
        await app.shutdown()
    async with await pending as r:
        assert r.status == 200
        assert await r.json() == {"name": "late", "value": 1, "version": 1}
    assert await stored_counter(client, "late") == 1
