"""The lock workloads of ``make bench``: acquire→release cycles, and their mutual-exclusion check.

wrk cannot drive a lock: releasing takes the token the acquire answered. Here ``clients``
asyncio tasks in one process share one aiohttp session; each loops acquire → release on
the lock its workload picks (one contended lock, or one of 1,000 at random, the same
sequence for every service) until the run's time is up, then finishes the cycle it is in,
so no lock is left held. A cycle is timed from its first acquire attempt to the release's
answer, retries included (a lock still held after ``WAIT`` s, a 5xx answer).

The check: per lock name, the clients' holds must not overlap. A client holds from the
moment the acquire's answer arrives until just before it sends the release, and yields to
the event loop once in between, so any other client's grant for that name that has
arrived by then is seen. A grant while another client holds the name is a violation, and
so is a fencing token that does not exceed the name's previous one; either fails the
benchmark (exit status 1), whatever the speed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bench.lock_clients import WAIT, Held, LockClient, LockUnavailable
from bench.servers import LOCKSTEP, VARIANTS

LOCKS = 1000  # locks the spread workload picks from
MAX_VIOLATIONS = 5  # described in full; the rest are counted
RELEASE_TRIES = 3

ETCD = "etcd"
# The report's name for each service the lock workloads drive.
LOCK_APPS = {LOCKSTEP: VARIANTS[LOCKSTEP].title, ETCD: "etcd's lock (`/v3/lock`, JSON gateway)"}
# (cycles/s, p50 ms, p99 ms, the service's CPU µs per cycle) of one run
LockRun = tuple[float, float, float, float]
ClientFactory = Callable[[aiohttp.ClientSession, int], LockClient]


@dataclass(frozen=True)
class LockWorkload:
    """Which lock each cycle takes: always ``prefix`` alone, or one of ``locks`` at random."""

    name: str
    title: str
    prefix: str
    locks: int = 1

    def picker(self, client: int) -> Callable[[], str]:
        """The lock names client number ``client`` takes in turn; the same for every service."""
        if self.locks == 1:
            return lambda: self.prefix
        rng = random.Random(client)
        return lambda: f"{self.prefix}{rng.randrange(self.locks)}"


LOCK_WORKLOADS = [
    LockWorkload("lock-one", "lock acquire→release, 1 contended lock", "bench-lock-one"),
    LockWorkload("lock-1000", "lock acquire→release, 1,000 locks", "bench-lock-", LOCKS),
]


@dataclass
class Holders:
    """Who holds each lock as the clients see it, and every overlap or stale token seen."""

    holder: dict[str, int] = field(default_factory=dict)
    last_token: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    count: int = 0

    def _violation(self, text: str) -> None:
        self.count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(text)

    def took(self, client: int, held: Held) -> None:
        other = self.holder.get(held.name)
        if other is not None:
            self._violation(f"client {client} got {held.name} while client {other} held it")
        self.holder[held.name] = client
        if held.token is not None:
            last = self.last_token.get(held.name)
            if last is not None and held.token <= last:
                self._violation(f"{held.name}: token {held.token} after token {last}")
            self.last_token[held.name] = held.token

    def letting_go(self, client: int, held: Held) -> None:
        if self.holder.get(held.name) == client:
            del self.holder[held.name]

    def verdict(self) -> str | None:
        """None when no holds overlapped; else what went wrong."""
        if not self.count:
            return None
        more = f" (and {self.count - len(self.violations)} more)" if self.count > 5 else ""
        return f"mutual exclusion broken {self.count} times: " + "; ".join(self.violations) + more


@dataclass
class CycleTotals:
    """One run: completed cycles, their durations, retries, and the exclusion check."""

    cycles: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    gave_up: int = 0  # acquires that found the lock still held after WAIT
    errors: int = 0  # 5xx answers and broken connections (retried)
    holders: Holders = field(default_factory=Holders)

    def measure(self, cpu_seconds: float | None) -> LockRun:
        """cycles/s, p50 ms, p99 ms, and CPU µs per cycle (nan when unknown)."""
        rate = self.cycles / self.seconds if self.seconds else 0.0
        if len(self.durations) >= 2:
            cuts = statistics.quantiles(self.durations, n=100, method="inclusive")
            p50, p99 = cuts[49] * 1000, cuts[98] * 1000
        else:
            p50 = p99 = self.durations[0] * 1000 if self.durations else float("nan")
        cpu = cpu_seconds * 1e6 / self.cycles if cpu_seconds is not None and self.cycles else None
        return rate, p50, p99, float("nan") if cpu is None else cpu


async def _cycle(
    client: LockClient, number: int, name: str, totals: CycleTotals, deadline: float
) -> None:
    """Acquire ``name`` (retrying until the run's ``deadline``), hold it one turn, release it."""
    started = time.perf_counter()
    while True:
        try:
            held = await client.acquire(name)
        except LockUnavailable:
            totals.errors += 1
            held = None
        else:
            totals.gave_up += held is None
        if held is not None:
            break
        if time.perf_counter() >= deadline:
            return  # a service that stopped answering ends the run, not the benchmark
    totals.holders.took(number, held)
    await asyncio.sleep(0)  # the hold: other clients' answers that have arrived are read now
    totals.holders.letting_go(number, held)
    for attempt in range(RELEASE_TRIES):
        try:
            await client.release(held)
            break
        except LockUnavailable:
            totals.errors += 1
            if attempt == RELEASE_TRIES - 1:
                return  # the lease ends by its TTL; the cycle is not counted
    totals.cycles += 1
    totals.durations.append(time.perf_counter() - started)


async def drive(
    make_client: ClientFactory, workload: LockWorkload, clients: int, duration: float
) -> CycleTotals:
    """Run ``clients`` cycling clients for ``duration`` seconds, each finishing its last cycle."""
    totals = CycleTotals()
    timeout = aiohttp.ClientTimeout(total=WAIT + 10)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        lock_clients = [make_client(session, n) for n in range(clients)]
        await asyncio.gather(*(c.start() for c in lock_clients))

        async def run(number: int, client: LockClient, deadline: float) -> None:
            pick = workload.picker(number)
            while time.perf_counter() < deadline:
                await _cycle(client, number, pick(), totals, deadline)

        began = time.perf_counter()
        await asyncio.gather(*(run(n, c, began + duration) for n, c in enumerate(lock_clients)))
        totals.seconds = time.perf_counter() - began
        await asyncio.gather(*(c.close() for c in lock_clients))
    return totals


@dataclass
class LockResult:
    """All rounds of one lock workload, for lockstep and (when it ran) etcd."""

    name: str
    title: str
    runs: dict[str, list[LockRun]] = field(default_factory=dict)
    gave_up: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)  # exclusion checks, per round

    def add(self, app: str, run: LockRun, totals: CycleTotals) -> str | None:
        """Record one run; what broke mutual exclusion in it, if anything did."""
        self.runs.setdefault(app, []).append(run)
        self.gave_up[app] = self.gave_up.get(app, 0) + totals.gave_up
        self.errors[app] = self.errors.get(app, 0) + totals.errors
        failed = self.failed.setdefault(app, [])
        verdict = totals.holders.verdict()
        if verdict is not None:
            failed.append(verdict)
        return verdict

    def median(self, app: str, i: int) -> float:
        return statistics.median(r[i] for r in self.runs[app])

    def ratio(self, app: str = LOCKSTEP, of: str = ETCD) -> float:
        """``app``'s median cycles/s over ``of``'s (nan when ``of`` completed none)."""
        return _share(self.median(app, 0), self.median(of, 0))

    def paired_ratio(self, app: str = LOCKSTEP, of: str = ETCD) -> float:
        """The median over rounds of ``app``'s cycles/s over ``of``'s in the same round."""
        pairs = zip(self.runs[app], self.runs[of], strict=True)
        return statistics.median(_share(a[0], o[0]) for a, o in pairs)

    def exclusion(self, app: str) -> str:
        failed = self.failed[app]
        return f"FAILED ({len(failed)} of {len(self.runs[app])})" if failed else "held"

    def summary_line(self) -> str:
        s, s99 = self.median(LOCKSTEP, 0), self.median(LOCKSTEP, 2)
        line = f"{self.title:<42} lockstep {s:8.0f} cycles/s p99 {s99:6.1f} ms"
        if ETCD not in self.runs:
            return line
        e, e99 = self.median(ETCD, 0), self.median(ETCD, 2)
        return (
            f"{line} | etcd {e:8.0f} cycles/s p99 {e99:6.1f} ms | "
            f"{self.ratio():.2f}x (by round {self.paired_ratio():.2f}x)"
        )


def _share(a: float, b: float) -> float:
    return a / b if b else float("nan")
