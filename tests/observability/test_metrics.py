"""GET /metrics in one process: what is counted, and that labels stay bounded."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest

import app.combining
from app.combining import Batch, Combiner, ops_of
from app.errors import LockTimeout
from app.locks import LOCKS, LockRegistry
from app.main import create_app
from app.metrics import LOCK_KINDS, Metrics
from app.storage import DB_ERROR_KINDS
from app.storage.sqlite.connection import error_kind
from tests.conftest import ClientFactory, settings_for
from tests.observability.helpers import parse_metrics, total
from tests.support import wait_for

# Methods the HTTP parser accepts but the service does not use.
ODD_METHODS = ("PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE")


async def scrape(client: TestClient[Any, Any]) -> dict[Any, float]:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(await r.text())


async def test_metrics_count_requests_by_route_template(client: TestClient[Any, Any]) -> None:
    """Requests are counted under their route template, method and status, with latency."""
    for name in ("a", "b", "c"):
        assert (await client.post(f"/counters/{name}/increment")).status == 200
    assert (await client.get("/counters/missing")).status == 404
    samples = await scrape(client)
    requests = "lockstep_http_requests_total"
    route = "/counters/{name}/increment"
    assert total(samples, requests, route=route, method="POST", status="200") == 3
    assert total(samples, requests, route="/counters/{name}", method="GET", status="404") == 1
    latency = "lockstep_http_request_duration_seconds_count"
    assert total(samples, latency, route=route) == 3
    assert total(samples, "lockstep_db_commit_batch_size_count") >= 1
    assert total(samples, "lockstep_db_commit_duration_seconds_count") >= 1
    assert total(samples, "lockstep_lock_wait_seconds_count", kind="counter") == 3


async def test_metrics_labels_stay_bounded_whatever_clients_send(
    client: TestClient[Any, Any],
) -> None:
    """A thousand requests with distinct names, paths, methods and request ids add no series
    and put no client string into a label."""
    await client.post("/counters/warm/increment")
    await client.get("/nowhere")
    await client.request("PROPFIND", "/counters/warm")
    await client.get("/items/warm")
    await scrape(client)
    before = await scrape(client)

    async def noise(i: int) -> None:
        await client.post(f"/counters/n{i}/increment", headers={"X-Request-ID": f"rid{i}"})
        await client.get(f"/nowhere/{i}")
        await client.request(ODD_METHODS[i % len(ODD_METHODS)], f"/counters/n{i}")
        await client.get(f"/items/n{i}")

    await asyncio.gather(*(noise(i) for i in range(250)))
    after = await scrape(client)
    new_series = {key for key in after if key not in before}
    assert new_series == set()
    label_values = {v for _, ls in after for _, v in ls}
    assert not any(v.startswith(("n1", "rid", "/nowhere/")) for v in label_values)
    assert not label_values & set(ODD_METHODS)
    assert total(after, "lockstep_http_requests_total", method="other") == 251


async def test_bounded_failure_series_exported_at_zero_before_any_event(
    client: TestClient[Any, Any],
) -> None:
    """A fresh service exports every lock-timeout and database-error kind at 0, so a rate()
    over them has a series to start from."""
    samples = await scrape(client)
    for kind in LOCK_KINDS:
        assert samples[("lockstep_lock_timeouts_total", frozenset({("kind", kind)}))] == 0
    for kind in DB_ERROR_KINDS:
        assert samples[("lockstep_db_errors_total", frozenset({("kind", kind)}))] == 0


async def test_idempotent_replays_counted_once_per_replayed_answer(
    client: TestClient[Any, Any],
) -> None:
    """N requests with one Idempotency-Key apply once and count N-1 replays."""
    headers = {"Idempotency-Key": "replay-metric"}
    replayed = []
    for _ in range(4):
        async with client.post("/counters/r/increment", headers=headers) as r:
            assert r.status == 200
            assert (await r.json())["value"] == 1
            replayed.append(r.headers.get("Idempotent-Replayed") == "true")
    assert replayed == [False, True, True, True]
    samples = await scrape(client)
    assert total(samples, "lockstep_idempotent_replays_total") == 3


async def test_resource_waits_and_timeouts_are_observed_by_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request queued behind a committing batch is observed with its wait; one that gives up
    is counted as a timeout of its kind."""
    metrics = Metrics()
    gate = asyncio.Event()
    # The combiner's clock, moved by hand: the wait observed is the time that passed.
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(app.combining, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    async def apply(key: str, ops: Batch[int]) -> list[int]:
        await gate.wait()
        return ops_of(ops)

    combiner: Combiner[int, int] = Combiner("counter", LockRegistry(1.0), apply, metrics)
    first = asyncio.create_task(combiner.submit("x", 1))
    await asyncio.sleep(0)
    second = asyncio.create_task(combiner.submit("x", 2))
    await asyncio.sleep(0)  # queued behind the first one's batch
    clock.now += 0.03
    gate.set()
    assert list(await asyncio.gather(first, second)) == [1, 2]

    gate.clear()
    impatient: Combiner[int, int] = Combiner("item", LockRegistry(0.01), apply, metrics)
    holder = asyncio.create_task(impatient.submit("y", 1))
    await asyncio.sleep(0)
    with pytest.raises(LockTimeout):
        await impatient.submit("y", 2)
    gate.set()
    await holder

    metrics.flush()
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    assert total(samples, "lockstep_lock_wait_seconds_count", kind="counter") == 2
    assert total(samples, "lockstep_lock_wait_seconds_sum", kind="counter") == pytest.approx(0.03)
    assert total(samples, "lockstep_lock_wait_seconds_bucket", kind="counter", le="0.0001") == 1
    assert total(samples, "lockstep_lock_timeouts_total", kind="item") == 1
    assert total(samples, "lockstep_lock_timeouts_total", kind="counter") == 0


def test_db_error_kinds_are_a_bounded_set() -> None:
    """SQLite errors map to a few fixed kinds by their primary result code."""
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5
    readonly_ext = sqlite3.OperationalError("attempt to write a readonly database")
    readonly_ext.sqlite_errorcode = 8 | (1 << 8)  # READONLY_RECOVERY
    odd = sqlite3.OperationalError("something else")
    odd.sqlite_errorcode = 1
    assert error_kind(busy) == "busy"
    assert error_kind(readonly_ext) == "readonly"
    assert error_kind(odd) == "other"
    assert error_kind(ValueError("not a database error")) is None


async def test_db_errors_counted_by_kind_when_the_database_is_busy(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A write refused because another process holds the write lock answers 503 and counts one
    ``busy`` database error."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, busy_timeout_ms=0)))
    assert (await client.post("/counters/x/increment")).status == 200
    blocker = sqlite3.connect(tmp_path / "data" / "lockstep.db", timeout=0)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        r = await client.post("/counters/x/increment")
    finally:
        blocker.rollback()
        blocker.close()
    assert r.status == 503
    samples = await scrape(client)
    assert total(samples, "lockstep_db_errors_total", kind="busy") == 1
    assert total(samples, "lockstep_db_errors_total") == 1


async def test_lock_gauges_show_held_locks_and_queued_requests(
    client: TestClient[Any, Any],
) -> None:
    """While a counter's lock is held, /metrics shows it held and the requests queued for it."""
    held = await client.app[LOCKS].acquire("counter:busy")
    try:
        calls = [asyncio.create_task(client.post("/counters/busy/increment")) for _ in range(3)]
        await wait_for(lambda: client.app[LOCKS].waiting() == 3)
        samples = await scrape(client)
        assert total(samples, "lockstep_locks_held") == 1
        assert total(samples, "lockstep_locks_waiting") == 3
    finally:
        held.release()
    answers = await asyncio.gather(*calls)
    for r in answers:
        r.release()
    assert [r.status for r in answers] == [200] * 3
    samples = await scrape(client)
    assert total(samples, "lockstep_locks_held") == 0
    assert total(samples, "lockstep_locks_waiting") == 0


async def test_stats_totals_match_the_metrics(client: TestClient[Any, Any]) -> None:
    """GET /stats reports the same totals a /metrics scrape adds up, without labels."""
    for _ in range(3):
        assert (await client.post("/counters/s/increment")).status == 200
    resp = await client.get("/stats")
    assert resp.status == 200
    stats = await resp.json()
    assert resp.headers["Cache-Control"] == "no-store"
    samples = await scrape(client)
    # The scrape also counts the /stats request, answered in between.
    assert stats["requests"] + 1 == total(samples, "lockstep_http_requests_total") == 4
    assert stats["lock_waits"] == total(samples, "lockstep_lock_wait_seconds_count") == 3
    assert stats["committed_resources"] == total(samples, "lockstep_db_commit_batch_size_sum")
    assert stats["commits"] >= 1 and stats["lock_timeouts"] == 0
    assert 0 <= stats["lock_waits_uncontended"] <= 3
