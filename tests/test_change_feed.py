"""The change feed under real gunicorn: a follower that keeps reconnecting misses and repeats
nothing, across a kill -9 of a worker and a restart; two hosts never reorder revisions."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import backend_env, fresh_postgres_url
from tests.observability.helpers import read_event
from tests.support import Service, wait_for

pytestmark = pytest.mark.slow

COUNTERS = [f"c{i:02d}" for i in range(20)]
RECORDS = [f"r{i}" for i in range(5)]
WATCHED = [("counter", n) for n in COUNTERS] + [("item", r) for r in RECORDS]
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
Entry = tuple[int, str, str, int | None]  # revision, kind, key, version


@asynccontextmanager
async def service_on(backend: str, tmp_path: Path, **env: str) -> AsyncIterator[Service]:
    """A two-worker gunicorn on a fresh database of ``backend``."""
    async with backend_env(backend) as database:
        with Service(tmp_path / "data", workers=2, env={**database, **env}) as service:
            yield service


class Load:
    """Writers: increments on 20 counters and PATCHes on 5 records, tallying 2xx increments."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.increments: Counter[str] = Counter()
        self.uncertain = 0  # requests whose fate is unknown (the connection broke)
        self.running = True

    def total(self) -> int:
        """Increments answered 2xx so far."""
        return sum(self.increments.values())

    async def answered(self, more: int) -> None:
        """Wait until ``more`` further increments have been answered 2xx."""
        goal = self.total() + more
        await wait_for(lambda: self.total() >= goal, within=60)

    async def increments_forever(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            name = rng.choice(COUNTERS)
            try:
                async with self.http.post(f"{self.url}/counters/{name}/increment") as r:
                    if r.status == 200:
                        self.increments[name] += 1
            except aiohttp.ClientError:
                self.uncertain += 1
                await asyncio.sleep(0.05)

    async def patches_forever(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            record = rng.choice(RECORDS)
            body = f'{{"n{rng.randrange(10)}": {rng.randrange(100)}}}'
            try:
                async with self.http.patch(
                    f"{self.url}/items/{record}", data=body, headers=MERGE_PATCH
                ) as r:
                    assert r.status in (200, 503), await r.text()
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)


class Follower:
    """Reads the stream of the watched resources, hanging up after a random number of events
    and resuming with Last-Event-ID, and keeps every entry it was sent."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.entries: list[Entry] = []
        self.last_id = 0
        self.reconnects = 0
        self.rng = random.Random(7)

    async def follow_until(self, revision: int) -> None:
        query = "&".join(f"{kind}={key}" for kind, key in WATCHED)
        while self.last_id < revision:
            headers = {"Last-Event-ID": str(self.last_id)}
            try:
                async with self.http.get(f"{self.url}/events?{query}", headers=headers) as r:
                    assert r.status == 200, await r.text()
                    for _ in range(self.rng.randrange(1, 40)):
                        event, event_id, data = await read_event(r.content, within=15)
                        assert event == "change", (event, data)  # never a snapshot or reset
                        assert event_id is not None
                        assert event_id == data["revision"] > self.last_id
                        for c in data["changes"]:
                            assert c["revision"] == event_id
                            self.entries.append(
                                (event_id, c["kind"], c.get("name", c.get("id")), c["version"])
                            )
                        self.last_id = event_id
                        if self.last_id >= revision:
                            break
            except (aiohttp.ClientError, EOFError, TimeoutError):
                pass  # the worker went away: resume from the last id, like EventSource
            self.reconnects += 1


async def read_log(http: aiohttp.ClientSession, url: str) -> tuple[list[Entry], int]:
    """Every entry of the watched resources in GET /changes, page by page; and the last revision."""
    watched = set(WATCHED)
    entries: list[Entry] = []
    since = 0
    while True:
        async with http.get(f"{url}/changes", params={"since": str(since), "limit": "500"}) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        for c in page["changes"]:
            key = c.get("name", c.get("id"))
            if (c["kind"], key) in watched:
                entries.append((c["revision"], c["kind"], key, c["version"]))
        if not page["changes"]:
            return entries, page["next"]
        since = page["next"]


def check_union(received: list[Entry], log: list[Entry]) -> None:
    """What the follower got is the log for its resources: no gap, no repeat, in order."""
    assert received == log
    revisions = [e[0] for e in received]
    assert revisions == sorted(revisions)
    assert len(set(received)) == len(received)


async def start_load(
    http: aiohttp.ClientSession, url: str, incrementers: int
) -> tuple[Load, Follower, list[asyncio.Task[None]], asyncio.Task[None]]:
    """Create the records, start ``incrementers`` increment writers and two PATCH writers, and
    a follower reading the stream from the start."""
    for record in RECORDS:
        async with http.put(f"{url}/items/{record}", json={"value": {}}) as r:
            assert r.status == 201
    load = Load(http, url)
    follower = Follower(http, url)
    writers = [asyncio.create_task(load.increments_forever(i)) for i in range(incrementers)]
    writers += [asyncio.create_task(load.patches_forever(i)) for i in range(2)]
    return load, follower, writers, asyncio.create_task(follower.follow_until(2**62))


async def test_follower_resuming_at_random_points_gets_exactly_the_log(
    backend: str, tmp_path: Path
) -> None:
    """Under increments and PATCHes from many clients, a follower that hangs up and resumes
    with Last-Event-ID again and again receives every change once, in order, and the counter
    versions it saw add up to the 2xx increments.

    Protection: the change entry is written in its change's transaction and revisions follow
    commit order; a stream resumes from the log, so nothing falls between two connections.
    """
    async with (
        service_on(backend, tmp_path) as service,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as http,
    ):
        load, follower, writers, following = await start_load(http, service.url, 8)
        # Well past what the checks below need (4 s of load gave 80-120 and 5,000 here).
        await wait_for(lambda: follower.reconnects > 20 and load.total() > 500, within=60)
        load.running = False
        await asyncio.gather(*writers)
        _, last = await read_log(http, service.url)
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follower.follow_until(last)
        log, _ = await read_log(http, service.url)
    assert follower.reconnects > 5
    check_union(follower.entries, log)
    final = {key: version for _, kind, key, version in log if kind == "counter"}
    assert sum(load.increments.values()) > 100
    assert final == {name: n for name, n in load.increments.items()}


async def test_follower_misses_nothing_across_kill_9_and_a_restart(
    backend: str, tmp_path: Path
) -> None:
    """A worker killed with -9 mid-load, then the whole service restarted: the follower still
    receives the log exactly, and every counter's version is within the increments that
    answered 2xx plus those whose answer was lost."""
    async with backend_env(backend) as env:
        service = Service(tmp_path / "data", workers=2, env=env)
        await asyncio.to_thread(service.start)
        try:
            await follow_across_kill_9_and_a_restart(service)
        finally:
            await asyncio.to_thread(service.quit)


async def follow_across_kill_9_and_a_restart(service: Service) -> None:
    """The load and the follower of the kill -9 test, and its checks."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as http:
        load, follower, writers, following = await start_load(http, service.url, 6)
        await load.answered(300)
        os.kill(service.worker_pids()[0], signal.SIGKILL)
        await load.answered(300)  # the load goes on across the kill
        await asyncio.to_thread(service.quit)
        lost = load.uncertain
        await wait_for(lambda: load.uncertain > lost)  # writers met the stopped service
        await asyncio.to_thread(service.start)
        await load.answered(300)
        load.running = False
        await asyncio.gather(*writers)
        _, last = await read_log(http, service.url)
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follower.follow_until(last)
        log, _ = await read_log(http, service.url)
    check_union(follower.entries, log)
    final = {key: version for _, kind, key, version in log if kind == "counter"}
    for name in COUNTERS:
        assert load.increments[name] <= (final.get(name) or 0)
    assert sum(v or 0 for v in final.values()) <= sum(load.increments.values()) + load.uncertain


async def test_two_hosts_never_show_a_revision_below_one_already_passed(tmp_path: Path) -> None:
    """Two gunicorn hosts on one PostgreSQL write at once while a follower pages GET /changes
    from both in turn: no entry ever appears at or below a revision it has already passed.

    Protection: revisions are taken under the change_feed row lock inside each write
    transaction (app.storage.postgres.changes), so they become visible in the order assigned.
    """
    async with fresh_postgres_url() as url:
        env = {"LOCKSTEP_DATABASE_URL": url, "LOCKSTEP_PG_POOL_MAX_SIZE": "4"}
        hosts = [Service(tmp_path / f"host{i}" / "data", workers=2, env=env) for i in (0, 1)]
        for host in hosts:
            host.data_dir.parent.mkdir(parents=True)
            await asyncio.to_thread(host.start)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as http:
                loads = [Load(http, host.url) for host in hosts]
                writers = [
                    asyncio.create_task(load.increments_forever(n * 10 + i))
                    for n, load in enumerate(loads)
                    for i in range(6)
                ]
                seen: list[tuple[int, str]] = []
                since = 0
                for turn in range(400):
                    host = hosts[turn % 2]
                    params = {"since": str(since), "limit": "50"}
                    async with http.get(f"{host.url}/changes", params=params) as r:
                        assert r.status == 200
                        page = await r.json()
                    seen += [(c["revision"], c["name"]) for c in page["changes"]]
                    since = page["next"]
                for load in loads:
                    load.running = False
                await asyncio.gather(*writers)
                log: list[tuple[int, str]] = []
                cursor = 0
                while cursor < since:
                    async with http.get(
                        f"{hosts[0].url}/changes", params={"since": str(cursor), "limit": "1000"}
                    ) as r:
                        page = await r.json()
                    log += [(c["revision"], c["name"]) for c in page["changes"]]
                    cursor = page["next"]
        finally:
            for host in hosts:
                await asyncio.to_thread(host.quit)
    assert len(seen) > 200
    assert seen == [entry for entry in log if entry[0] <= since]


async def test_short_retention_answers_410_and_streams_reset(backend: str, tmp_path: Path) -> None:
    """With LOCKSTEP_CHANGES_RETENTION=1, the background purge drops the log: GET /changes from
    before it answers 410 with ``oldest``, and a stream resuming from there gets event: reset
    and then a snapshot of the current state, on every new connection."""
    env = {"LOCKSTEP_CHANGES_RETENTION": "1", "LOCKSTEP_IDEMPOTENCY_PURGE_INTERVAL": "0.2"}
    async with service_on(backend, tmp_path, **env) as service, aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(f"{service.url}/counters/c/increment") as r:
                assert r.status == 200

        async def purged() -> bool:
            # All three: a purge may land between two of them, which a loaded machine spaces out.
            async with http.get(f"{service.url}/changes", params={"since": "0"}) as r:
                return r.status == 410 and (await r.json())["oldest"] == 4

        await wait_for(purged, within=15, step=0.1)
        async with http.get(f"{service.url}/changes", params={"since": "0"}) as r:
            assert r.content_type == "application/problem+json"
            assert (await r.json())["oldest"] == 4
        async with http.get(f"{service.url}/changes", params={"since": "3"}) as r:
            assert r.status == 200
            assert (await r.json())["oldest"] == 4
        for _ in range(4):  # new connections: both workers answer, whatever each has cached
            async with http.get(
                f"{service.url}/counters/c/events", headers={"Last-Event-ID": "1"}
            ) as r:
                assert r.status == 200
                assert await read_event(r.content) == ("reset", None, {"oldest": 4})
                event, event_id, data = await read_event(r.content)
                assert (event, event_id) == ("snapshot", 3)
                assert [(c["value"], c["version"]) for c in data["changes"]] == [(3, 3)]
