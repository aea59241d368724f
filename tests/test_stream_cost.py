"""What event streams cost under real gunicorn: what changes, not what they watch.

Many streams watching many resources still get each commit within a second, and an idle
stream on a large record costs its worker nothing measurable while other resources change.
``make soak`` runs larger versions of both.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from tests.observability.helpers import read_event
from tests.support import Service, wait_for

pytestmark = pytest.mark.slow

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Receipts:
    """When each stream received each revision's event."""

    def __init__(self) -> None:
        self.at: dict[tuple[int, int], float] = {}  # (stream, revision) -> when
        self.snapshots = 0

    async def follow(self, http: aiohttp.ClientSession, url: str, stream: int) -> None:
        async with http.get(url) as r:
            assert r.status == 200, await r.text()
            while True:
                event, event_id, _ = await read_event(r.content, within=3600)
                if event == "snapshot":
                    self.snapshots += 1
                else:
                    assert event == "change" and event_id is not None, event
                    self.at[(stream, event_id)] = time.monotonic()


async def commit_latencies(
    service: Service, streams: int, watched: int, writes_per_second: float, seconds: float
) -> tuple[int, list[float]]:
    """With ``streams`` streams each watching ``watched`` counters of its own while writers
    increment random watched counters: how many increments answered, and for each commit and
    stream it touched, the seconds from the commit's first answer to the stream's event."""
    names = [[f"s{s:03d}.c{c:03d}" for c in range(watched)] for s in range(streams)]
    answered: dict[int, float] = {}  # revision -> when its first answer arrived
    expected: set[tuple[int, int]] = set()  # (stream, revision) of every increment
    increments = 0
    receipts = Receipts()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        followers = [
            asyncio.create_task(
                receipts.follow(
                    http, f"{service.url}/events?" + "&".join(f"counter={n}" for n in mine), s
                )
            )
            for s, mine in enumerate(names)
        ]
        try:
            await wait_for(lambda: receipts.snapshots == streams, within=60)

            async def write(seed: int, count: int, period: float) -> None:
                nonlocal increments
                rng = random.Random(seed)
                start = time.monotonic() + seed / writes_per_second  # writers take turns
                for n in range(count):
                    await asyncio.sleep(max(0.0, start + n * period - time.monotonic()))
                    stream = rng.randrange(streams)
                    name = rng.choice(names[stream])
                    async with http.post(f"{service.url}/counters/{name}/increment") as r:
                        assert r.status == 200, await r.text()
                        increments += 1
                        revision = int(r.headers["Lockstep-Revision"])
                        answered.setdefault(revision, time.monotonic())
                        expected.add((stream, revision))

            writers = 4
            per_writer = int(writes_per_second * seconds / writers)
            await asyncio.gather(
                *(write(i, per_writer, writers / writes_per_second) for i in range(writers))
            )
            # Give stragglers a bounded while; what has not arrived by then counts as never.
            with contextlib.suppress(TimeoutError):
                await wait_for(lambda: expected <= receipts.at.keys(), within=10)
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
    latencies = [receipts.at.get(key, float("inf")) - answered[key[1]] for key in expected]
    return increments, latencies


@pytest.mark.parametrize(
    ("streams", "watched", "rate", "seconds"),
    [
        pytest.param(100, 100, 40, 3, id="suite"),
        pytest.param(100, 100, 100, 30, id="soak", marks=pytest.mark.soak),
    ],
)
async def test_many_streams_on_many_counters_get_each_commit_within_a_second(
    tmp_path: Path, streams: int, watched: int, rate: float, seconds: float
) -> None:
    """100 streams each watching 100 counters of their own (10,000 in all), two workers,
    increments on random watched counters: every commit's event arrives within 1 s of the
    increment's answer (p99 and max).

    Protection: the hub reads each commit's change-log entries once and hands them to the
    streams that watch them (app.events). A hub that re-reads every watched resource after
    commits reads 10,000 resources a round and falls seconds behind.
    """
    with Service(tmp_path / "data", workers=2, env={"LOCKSTEP_LOG_LEVEL": "warning"}) as service:
        increments, latencies = await commit_latencies(service, streams, watched, rate, seconds)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"{increments} increments, {len(latencies)} events,"
        f" {streams} streams x {watched} counters:"
        f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    assert increments == rate * seconds
    assert p99 < 1.0
    assert max(latencies) < 1.0


async def access_window(
    http: aiohttp.ClientSession, service: Service, pid: int, seconds: float
) -> tuple[float, list[float]]:
    """GET /access ten times a second for ``seconds``: the worker's CPU seconds meanwhile, and
    each request's latency."""
    latencies = []
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    for n in range(int(seconds * 10)):
        await asyncio.sleep(max(0.0, start + n / 10 - time.monotonic()))
        sent = time.monotonic()
        async with http.get(f"{service.url}/access") as r:
            assert r.status == 200
            await r.read()
        latencies.append(time.monotonic() - sent)
    await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
    return cpu_seconds(pid) - start_cpu, latencies


async def read_snapshot(content: aiohttp.StreamReader) -> int:
    """Read a stream up to the end of its snapshot event (one long data line); its size."""
    seen = b""
    size = 0
    while b"]}\n\n" not in seen:
        chunk = await asyncio.wait_for(content.readany(), 30)
        assert chunk, "stream ended"
        size += len(chunk)
        seen = seen[-8:] + chunk
    return size


@pytest.mark.parametrize(
    "megabytes", [pytest.param(10, id="suite"), pytest.param(50, id="soak", marks=pytest.mark.soak)]
)
async def test_idle_stream_on_a_large_record_costs_its_worker_nothing(
    tmp_path: Path, megabytes: int
) -> None:
    """One worker, a record of 10 MB (50 MB in make soak) and GET /access ten times a second:
    with an idle stream open on the record, the worker's CPU over 2 s grows by less than
    0.1 s, and /access answers as fast (median within 10 ms).

    Protection: the hub reads only new change-log entries, which never hold the idle record.
    A hub that re-reads every watched resource after each commit decodes the whole record
    ten times a second.
    """
    env = {"LOCKSTEP_LOG_LEVEL": "warning", "LOCKSTEP_MAX_BODY_BYTES": str(64 * MB)}
    body = b'{"value": "' + b"x" * (megabytes * MB) + b'"}'
    with Service(tmp_path / "data", workers=1, env=env) as service:
        [pid] = service.worker_pids()
        async with aiohttp.ClientSession() as http:
            async with http.put(
                f"{service.url}/items/big",
                data=io.BytesIO(body),
                headers={"Content-Type": "application/json"},
            ) as r:
                assert r.status == 201, await r.text()
            await access_window(http, service, pid, 0.5)  # warm up the /access path
            idle_cpu, idle_latencies = await access_window(http, service, pid, 2)
            async with http.get(f"{service.url}/items/big/events") as stream:
                assert stream.status == 200
                assert await read_snapshot(stream.content) > megabytes * MB
                watched_cpu, watched_latencies = await access_window(http, service, pid, 2)
    idle_p50 = statistics.median(idle_latencies)
    watched_p50 = statistics.median(watched_latencies)
    print(
        f"worker CPU over 2 s: {idle_cpu:.2f} s without the stream, {watched_cpu:.2f} s with it;"
        f" /access p50 {idle_p50 * 1000:.1f} ms, {watched_p50 * 1000:.1f} ms"
    )
    assert watched_cpu - idle_cpu < 0.1
    assert watched_p50 - idle_p50 < 0.010
