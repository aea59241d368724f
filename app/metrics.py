"""Prometheus metrics: what the service counts, and how a scrape sees every gunicorn worker.

Under gunicorn, ``config/gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any worker starts; each worker's metrics then live in memory-mapped files
there and a scrape of any worker adds up all of them. Without that variable (tests, a
single process) the app's own registry is rendered.

No label ever takes a value a client chose: routes are the registered templates
(``/counters/{name}``, never the name), methods and lock kinds come from fixed sets.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import defaultdict

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.logs import CURRENT
from app.storage import DB_ERROR_KINDS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LOCK_KINDS = frozenset({"counter", "item", "txn"})  # txn: a transaction's locks, all of them
UNMATCHED = "(unmatched)"

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAIT = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# The lowest lock-wait bucket: a wait this short means nobody was ahead.
UNCONTENDED_BUCKET = "0.0001"

# GET /stats: sample name -> field, each summed over every label set and worker.
SUMMARY = {
    "lockstep_http_requests_total": "requests",
    "lockstep_lock_wait_seconds_count": "lock_waits",
    "lockstep_lock_wait_seconds_bucket": "lock_waits_uncontended",
    "lockstep_lock_wait_seconds_sum": "lock_wait_seconds",
    "lockstep_lock_timeouts_total": "lock_timeouts",
    "lockstep_locks_held": "locks_held",
    "lockstep_locks_waiting": "locks_waiting",
    "lockstep_db_commit_batch_size_count": "commits",
    "lockstep_db_commit_batch_size_sum": "committed_resources",
    "lockstep_event_streams": "event_streams",
}


def lock_kind(key: str) -> str:
    """The bounded label for a resource kind or a lock key such as ``counter:<name>``."""
    kind = key.partition(":")[0]
    return kind if kind in LOCK_KINDS else "other"


def method_label(method: str) -> str:
    """The request method, or ``other`` for anything outside the standard set."""
    return method if method in METHODS else "other"


class _Tally:
    """Observations of one histogram child not yet handed to prometheus_client."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, amount: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= amount.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def flush_into(self, child: Histogram) -> None:
        """Add the tallied observations to ``child`` as observe() would have, then reset."""
        if not any(self.counts):
            return
        # prometheus_client has no observe-many; a histogram child is a sum and one value
        # per bucket (pinned prometheus-client ~=0.26).
        child._sum.inc(self.total)
        for i, count in enumerate(self.counts):
            if count:
                child._buckets[i].inc(count)
        self.counts = [0] * len(self.counts)
        self.total = 0.0


class Metrics:
    """Every metric the service exports, registered in a registry of this app's own."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lockstep_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "lockstep_http_request_duration_seconds",
            "Time from the request reaching the app to its response being ready, by route.",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.lock_wait = Histogram(
            "lockstep_lock_wait_seconds",
            "Time a request waited for its resource's lock, by resource kind.",
            ["kind"],
            buckets=_WAIT,
            registry=r,
        )
        self.lock_timeouts = Counter(
            "lockstep_lock_timeouts",
            "Requests that gave up waiting for a resource's lock (503), by resource kind.",
            ["kind"],
            registry=r,
        )
        self.locks_held = Gauge(
            "lockstep_locks_held",
            "Resource locks currently held, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.locks_waiting = Gauge(
            "lockstep_locks_waiting",
            "Requests currently waiting for a resource lock, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.commit_latency = Histogram(
            "lockstep_db_commit_duration_seconds",
            "Time one write transaction (a batch of resources) took, BEGIN to COMMIT.",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "lockstep_db_commit_batch_size",
            "Resources committed together in one write transaction.",
            buckets=_BATCH,
            registry=r,
        )
        self.db_errors = Counter(
            "lockstep_db_errors",
            "Database operations that failed, by kind (busy, locked, readonly, full, io, ...).",
            ["kind"],
            registry=r,
        )
        self.idempotent_replays = Counter(
            "lockstep_idempotent_replays",
            "Requests answered from a stored Idempotency-Key response instead of re-running.",
            registry=r,
        )
        self.event_streams = Gauge(
            "lockstep_event_streams",
            "Server-Sent Event streams currently open, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        # The failure counters' children are made now, so each kind is exported at 0 from
        # the first scrape on rather than appearing with its first event (a rate() needs
        # the zero). In multiprocess mode each worker writes its zeros to its own file and
        # a scrape adds them up like any other value.
        for kind in sorted(LOCK_KINDS):
            self.lock_timeouts.labels(kind)
        for kind in DB_ERROR_KINDS:
            self.db_errors.labels(kind)
        # Per-request figures are added up in plain dicts and handed to prometheus_client
        # by flush() (once a second, and before every scrape of this worker): in
        # multiprocess mode every inc() is a locked write to a memory-mapped file, five of
        # them per request, which cost more than the rest of a GET /access.
        self._requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self._latencies: dict[str, _Tally] = {}
        self._waits: dict[str, _Tally] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self._requests[(route, method if method in METHODS else "other", status)] += 1
        tally = self._latencies.get(route)
        if tally is None:
            tally = self._latencies[route] = _Tally(_LATENCY)
        tally.add(seconds)

    def flush(self) -> None:
        """Hand the figures gathered since the last flush to the exported metrics."""
        requests, self._requests = self._requests, defaultdict(int)
        for (route, method, status), count in requests.items():
            self.requests.labels(route, method, str(status)).inc(count)
        for route, tally in self._latencies.items():
            tally.flush_into(self.latency.labels(route))
        for kind, tally in self._waits.items():
            tally.flush_into(self.lock_wait.labels(kind))

    # WaitObserver: called by the write combiners.
    def waited(self, kind: str, seconds: float) -> None:
        """Record how long a request waited for its resource (queue and lock)."""
        label = lock_kind(kind)
        tally = self._waits.get(label)
        if tally is None:
            tally = self._waits[label] = _Tally(_WAIT)
        tally.add(seconds)
        context = CURRENT.get()
        if context is not None:
            context.lock_wait += seconds

    def timed_out(self, kind: str, seconds: float) -> None:
        """Record a request that gave up on its resource after waiting ``seconds``."""
        self.lock_timeouts.labels(lock_kind(kind)).inc()
        context = CURRENT.get()
        if context is not None:
            context.lock_wait += seconds

    # StorageObserver: called by the storage backend.
    def committed(self, seconds: float, units: int) -> None:
        """Record one committed write transaction."""
        self.commit_latency.observe(seconds)
        self.batch_size.observe(units)

    def failed(self, kind: str) -> None:
        """Record a failed database operation of a bounded ``kind``."""
        self.db_errors.labels(kind).inc()

    def sample_locks(self, held: int, waiting: int) -> None:
        self.locks_held.set(held)
        self.locks_waiting.set(waiting)

    def _scraped(self) -> CollectorRegistry:
        """The registry a scrape reads (every worker's files, or this process's metrics),
        with this worker's buffered figures handed over first."""
        self.flush()
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return registry

    def _render_sync(self) -> bytes:
        return generate_latest(self._scraped())

    def _summary_sync(self) -> dict[str, float]:
        sums: dict[str, float] = dict.fromkeys(SUMMARY.values(), 0.0)
        for family in self._scraped().collect():
            for sample in family.samples:
                name = sample.name
                # Of the wait buckets, only the lowest counts: the uncontended waits.
                bucket = name == "lockstep_lock_wait_seconds_bucket"
                if bucket and sample.labels.get("le") != UNCONTENDED_BUCKET:
                    continue
                if name in SUMMARY:
                    sums[SUMMARY[name]] += sample.value
        # Everything but the wait time counts whole things.
        return {k: v if k == "lock_wait_seconds" else round(v) for k, v in sums.items()}

    async def summary(self) -> dict[str, float]:
        """A few totals over every worker, without labels: what the dashboard shows."""
        if self.multiprocess_dir is None:
            return self._summary_sync()
        return await asyncio.to_thread(self._summary_sync)

    async def render(self) -> bytes:
        """The exposition text; reading every worker's files happens off the event loop."""
        if self.multiprocess_dir is None:
            return self._render_sync()
        return await asyncio.to_thread(self._render_sync)


METRICS = web.AppKey("metrics", Metrics)
