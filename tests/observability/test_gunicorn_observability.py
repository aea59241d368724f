"""Observability under real gunicorn with 2 workers: metrics add up, events cross workers."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from app.metrics import LOCK_KINDS
from app.storage import DB_ERROR_KINDS
from tests.observability.helpers import next_event, parse_metrics, total
from tests.observability.workers import serving_worker
from tests.support import Service

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with Service(tmp_path / "data", workers=2, env={"LOCKSTEP_LOG_FORMAT": "json"}) as service:
        yield service


def access_lines(service: Service) -> list[dict[str, object]]:
    lines = []
    for text in service.log().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if line.get("logger") == "app.access":
                lines.append(line)
    return lines


def post_via_worker(service: Service, path: str, worker: int, tries: int = 200) -> int:
    """POST ``path`` on a fresh connection that worker ``worker`` accepted; returns the status."""
    pids = service.worker_pids()
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        try:
            conn.connect()
            client_port = conn.sock.getsockname()[1]
            # The accept happens asynchronously; wait until the socket shows up in a worker.
            deadline = time.monotonic() + 2
            owner = None
            while owner is None and time.monotonic() < deadline:
                owner = serving_worker(pids, service.port, client_port)
                if owner is None:
                    conn.sock.settimeout(0.01)
                    time.sleep(0.01)
            conn.sock.settimeout(10)
            if owner == worker:
                conn.request("POST", path)
                return conn.getresponse().status
        finally:
            conn.close()
    raise AssertionError(f"no connection landed on worker {worker} in {tries} tries")


async def test_metrics_add_up_across_workers(service: Service) -> None:
    """Requests served by both workers are all counted (within a flush interval), by any worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    sent = 0
    async with aiohttp.ClientSession(connector=connector) as http:
        # New connections until both workers have answered some (bounded).
        while sent < 2000:
            for _ in range(40):
                async with http.get(service.url + "/access") as r:
                    assert r.status == 200
            sent += 40
            lines = access_lines(service)
            if {ln["pid"] for ln in lines if ln["route"] == "/access"} == set(
                service.worker_pids()
            ):
                break
        served_by = {ln["pid"] for ln in access_lines(service) if ln["route"] == "/access"}
        assert served_by == set(service.worker_pids())
        requests = "lockstep_http_requests_total"
        # Workers hand their per-request figures to the shared files once a second.
        deadline = time.monotonic() + 10
        seen = -1.0
        while time.monotonic() < deadline:
            async with http.get(service.url + "/metrics") as r:
                samples = parse_metrics(await r.text())
            seen = total(samples, requests, route="/access", method="GET", status="200")
            if seen >= sent:
                break
            await asyncio.sleep(0.1)
        assert seen == sent
        for _ in range(4):
            async with http.get(service.url + "/metrics") as r:
                assert r.status == 200
                samples = parse_metrics(await r.text())
            requests = "lockstep_http_requests_total"
            assert total(samples, requests, route="/access", method="GET", status="200") == sent
            assert total(samples, "lockstep_lock_wait_seconds_count", kind="counter") == sent
            assert total(samples, "lockstep_db_commit_batch_size_sum") == sent


async def test_failure_series_at_zero_in_a_fresh_multiprocess_scrape(service: Service) -> None:
    """Under gunicorn, where each worker writes its zeros to its own metrics file, every
    lock-timeout and database-error kind is exported at 0 before anything failed."""
    async with aiohttp.ClientSession() as http, http.get(service.url + "/metrics") as r:
        assert r.status == 200
        samples = parse_metrics(await r.text())
    for kind in LOCK_KINDS:
        assert samples[("lockstep_lock_timeouts_total", frozenset({("kind", kind)}))] == 0
    for kind in DB_ERROR_KINDS:
        assert samples[("lockstep_db_errors_total", frozenset({("kind", kind)}))] == 0


async def test_event_stream_sees_changes_made_by_the_other_worker(service: Service) -> None:
    """A stream opened on one worker reports increments committed by the other worker."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(service.url + "/counters/shared/events") as stream,
    ):
        assert stream.status == 200
        event, first = await next_event(stream.content)
        assert (event, first["changes"][0]["value"]) == ("snapshot", None)
        assert stream.connection is not None and stream.connection.transport is not None
        client_port = stream.connection.transport.get_extra_info("sockname")[1]
        pids = service.worker_pids()
        stream_worker = serving_worker(pids, service.port, client_port)
        assert stream_worker in pids
        other = next(pid for pid in pids if pid != stream_worker)
        status = await asyncio.to_thread(
            post_via_worker, service, "/counters/shared/increment", other
        )
        assert status == 200
        event, data = await next_event(stream.content)
        [entry] = data["changes"]
        assert (event, entry["name"], entry["value"]) == ("change", "shared", 1)


async def test_json_request_lines_carry_id_route_and_pid(service: Service) -> None:
    """With LOCKSTEP_LOG_FORMAT=json each request is one JSON line with its id and worker pid."""
    async with aiohttp.ClientSession() as http:
        headers = {"X-Request-ID": "trace-me-1"}
        async with http.post(service.url + "/counters/j/increment", headers=headers) as r:
            assert r.status == 200
            assert r.headers["X-Request-ID"] == "trace-me-1"
    deadline = time.monotonic() + 10
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        lines = [ln for ln in access_lines(service) if ln["request_id"] == "trace-me-1"]
        await asyncio.sleep(0.05)
    [line] = lines
    assert line["route"] == "/counters/{name}/increment"
    assert line["method"] == "POST" and line["status"] == 200
    assert line["pid"] in service.worker_pids()
    assert isinstance(line["latency_ms"], float) and isinstance(line["lock_wait_ms"], float)


async def test_sigterm_ends_open_streams_and_exits_promptly(tmp_path: Path) -> None:
    """SIGTERM with streams open sends them a shutdown event and gunicorn exits 0 well before
    its 20 s graceful timeout."""
    service = Service(tmp_path / "data", workers=2).start()
    try:
        async with aiohttp.ClientSession() as http:
            streams = [await http.get(service.url + f"/counters/s{i}/events") for i in range(4)]
            for s in streams:
                await next_event(s.content)
            started = time.monotonic()
            assert service.proc is not None
            service.proc.send_signal(signal.SIGTERM)
            for s in streams:
                assert await next_event(s.content) == ("shutdown", {})
                s.close()
            code = await asyncio.to_thread(service.proc.wait, 30)
            assert code == 0
            assert time.monotonic() - started < 10
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.quit()


async def test_dead_worker_live_gauges_dropped_and_counts_kept(tmp_path: Path) -> None:
    """A killed worker's open-stream gauge leaves the sum; its requests stay counted."""
    with Service(tmp_path / "data", workers=1) as service:
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(service.url + "/access") as r:
                    assert r.status == 200
            stream = await http.get(service.url + "/counters/g/events")
            await next_event(stream.content)
            async with http.get(service.url + "/metrics") as r:
                before = parse_metrics(await r.text())
            assert total(before, "lockstep_event_streams") == 1
            [worker] = service.worker_pids()
            os.kill(worker, signal.SIGKILL)
            stream.close()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pids = service.worker_pids()
                if pids and pids != [worker]:
                    break
                await asyncio.sleep(0.05)
            service.wait_ready()
            async with http.get(service.url + "/metrics") as r:
                after = parse_metrics(await r.text())
        assert total(after, "lockstep_event_streams") == 0
        requests = "lockstep_http_requests_total"
        assert total(after, requests, route="/access", status="200") == 5
