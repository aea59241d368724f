"""``make bench``: lockstep as ``make run`` starts it, beside hello world and its peers.

Every app runs under the same gunicorn settings (``bench.servers.VARIANTS``): lockstep as
``make run`` starts it (access lines on, to a file), aiohttp hello world, and for the
workloads that name them (``Workload.peers``) lockstep with its access lines off and the
peers: the durable floor (``bench.floor``), Redis ``INCR`` with ``appendfsync always`` and
``everysec`` (``bench.redis_peer``) and PostgreSQL ``UPDATE … RETURNING``
(``bench.postgres_peer``), whose servers ``bench.stores`` starts on loopback and stops
after. In every round wrk drives each app in turn with the very same Lua script, so all see
the same machine noise. The report gives medians of req/s, p50, p99 and worker CPU per
request, every row's share of hello world and of the durable Redis peer, and the targets.
After every write run the exactly-once check of ``bench.workloads`` must hold, for
lockstep and the peers alike, or the benchmark fails (exit status 1) whatever the speed.

The lock workloads (``bench.locks``) are acquire→release cycles from an asyncio client, not
wrk, against lockstep's ``/locks`` and, as their peer, etcd's lock service (``bench.stores``
starts etcd); their mutual-exclusion check must hold likewise.

    python -m bench.run [--rounds 3] [--duration 5] [--connections 64] [--only access,read]
                        [--no-peers] [--baseline ../lockstep-before]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.lock_clients import TTL, WAIT, EtcdLocks, LockError, LockstepLocks
from bench.locks import ETCD, LOCK_WORKLOADS, ClientFactory, LockResult, LockWorkload, drive
from bench.report import Result, Run, write_report
from bench.servers import (
    BASELINE,
    FLOOR,
    HELLO,
    LOCKSTEP,
    QUIET,
    ROOT,
    VARIANTS,
    Server,
    add_baseline,
)
from bench.stores import Etcd, Postgres, Redis, StoreMissing
from bench.workloads import WORKLOADS, Workload, exactly_once_error


# Each peer's database server, and the variable its app finds the server's URL in.
def _store(name: str) -> Redis | Postgres:
    return Postgres() if name == "postgres" else Redis(name.removeprefix("redis-"))


STORE_URL_ENV = {
    "redis-always": "BENCH_REDIS_URL",
    "redis-everysec": "BENCH_REDIS_URL",
    "postgres": "BENCH_POSTGRES_URL",
}


def wrk(
    server: Server, workload: Workload, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, int], str]:
    """One wrk run: the totals the shared ``done()`` printed and the workers' CPU, and how
    wrk's connections were split between the workers halfway through (e.g. ``29/35``)."""
    url = server.url
    script = workdir / f"{workload.name}.lua"
    script.write_text(workload.script_text())
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    env = {**os.environ, **workload.wrk_env()}
    cpu_before = server.cpu_seconds()
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as running:
        split = "?"
        try:
            running.wait(timeout=args.duration / 2)
        except subprocess.TimeoutExpired:  # halfway: every connection is open
            counts = server.connections_per_worker()
            split = "?" if counts is None else "/".join(map(str, counts))
        out, err = running.communicate()
    cpu_after = server.cpu_seconds()
    if running.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out}{err}")
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            totals: dict[str, int] = json.loads(line.removeprefix("BENCH_JSON "))
            if cpu_before is not None and cpu_after is not None and totals["requests"]:
                # workers' CPU microseconds per answered request: robust to machine noise
                totals["cpu_us"] = round((cpu_after - cpu_before) * 1e6 / totals["requests"])
            return totals, split
    raise RuntimeError(f"wrk printed no totals:\n{out}")


def measure(totals: dict[str, int]) -> Run:
    """req/s, p50 ms, p99 ms and worker CPU µs per request of one run."""
    rate = totals["requests"] / (totals["duration_us"] / 1e6)
    cpu = float(totals.get("cpu_us", "nan"))
    return rate, totals["p50_us"] / 1000, totals["p99_us"] / 1000, cpu


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument(
        "--only", default="", help="comma-separated workload names to run (lock-one, ...)"
    )
    p.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        help="extra gunicorn flag for BOTH apps, e.g. --gunicorn-arg=--worker-class=...",
    )
    p.add_argument(
        "--database-url",
        default="",
        help="LOCKSTEP_DATABASE_URL for lockstep, e.g. postgresql://... (default: SQLite)",
    )
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the peers (durable floor, Redis, PostgreSQL, etcd) on the workloads that "
        "name them (default; the floor never with --database-url)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of lockstep (after its `make run` set it up) to run beside "
        "lockstep in every round of the HTTP workloads: an A/B of two versions in one run",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-report", action="store_true", help="print only; write no files")
    return p.parse_args(argv)


def has_errors(totals: dict[str, int]) -> bool:
    """Whether wrk saw error statuses, timeouts, or socket errors (each reset reconnects)."""
    return any(totals[k] for k in ("non_2xx_3xx", "timeout", "connect", "read", "write"))


def run_workload(
    workload: Workload,
    servers: dict[str, Server],
    args: argparse.Namespace,
    workdir: Path,
    failures: list[str],
) -> Result:
    """Every round of one workload against lockstep, hello world and the peers it names."""
    names = [n for n in (LOCKSTEP, HELLO, BASELINE, *workload.peers) if n in servers]
    result = Result(workload.name, workload.title, workload.targets)
    for name in names:
        result.runs[name], result.errors[name], result.timeouts[name] = [], 0, 0
        if VARIANTS[name].counts:
            if workload.setup is not None:
                workload.setup(servers[name].url)
            if workload.tally is not None:
                result.failed[name] = []
    for round_no in range(1, args.rounds + 1):
        split: dict[str, str] = {}
        for name in names:
            url = servers[name].url
            checked = name in result.failed and workload.tally is not None
            before = workload.tally(url) if checked and workload.tally else 0
            totals, split[name] = wrk(servers[name], workload, args, workdir)
            if checked and workload.tally is not None:
                ok = totals["requests"] - totals["non_2xx_3xx"]
                error = exactly_once_error(before, workload.tally(url), ok, args.connections)
                if error is None and workload.final_check is not None:
                    error = workload.final_check(url)
                if error is not None:
                    result.failed[name].append(error)
                    failures.append(f"{name} {workload.name} round {round_no}: {error}")
                    print(f"!!! EXACTLY-ONCE FAILED: {name} {workload.name}: {error}: {totals}")
            # Errors are reported, not failed on: a 503 under overload is correct behaviour.
            result.errors[name] += totals["non_2xx_3xx"]
            result.timeouts[name] += totals["timeout"]
            if has_errors(totals):
                print(f"!!! ERRORS (reported): {name} {workload.name}: {totals}", flush=True)
            result.runs[name].append(measure(totals))
        result.splits.append((split[LOCKSTEP], split[HELLO]))
        hello = result.runs[HELLO][-1][0]
        for name in names:
            rate, _, p99, cpu = result.runs[name][-1]
            print(
                f"{workload.name:>15} round {round_no}: {name:>14} {rate:8.0f} req/s "
                f"p99 {p99:6.1f} ms {cpu:4.0f} µs CPU {split[name]:>5} | {rate / hello:.2f}x",
                flush=True,
            )
    return result


def run_lock_workload(
    workload: LockWorkload,
    lockstep: Server,
    etcd: Etcd | None,
    args: argparse.Namespace,
    failures: list[str],
) -> LockResult:
    """Every round of one lock workload against lockstep and, when it runs, etcd."""
    lease_ttl = math.ceil(args.duration) + TTL + WAIT  # outlasts the run and its last cycles
    apps: dict[str, tuple[ClientFactory, Callable[[], float | None]]] = {
        LOCKSTEP: (
            lambda session, n: LockstepLocks(session, lockstep.url, f"bench-client-{n}"),
            lockstep.cpu_seconds,
        )
    }
    if etcd is not None:
        apps[ETCD] = (lambda session, n: EtcdLocks(session, etcd.url, lease_ttl), etcd.cpu_seconds)
    result = LockResult(workload.name, workload.title)
    for round_no in range(1, args.rounds + 1):
        for app, (clients, cpu_seconds) in apps.items():
            before = cpu_seconds()
            totals = asyncio.run(drive(clients, workload, args.connections, args.duration))
            after = cpu_seconds()
            used = None if before is None or after is None else after - before
            broken = result.add(app, totals.measure(used), totals)
            if broken is not None:
                failures.append(f"{app} {workload.name} round {round_no}: {broken}")
                print(f"!!! MUTUAL EXCLUSION FAILED: {app} {workload.name}: {broken}")
            rate, _, p99, cpu = result.runs[app][-1]
            print(
                f"{workload.name:>15} round {round_no}: {app:>14} {rate:8.0f} cycles/s "
                f"p99 {p99:6.1f} ms {cpu:4.0f} µs CPU, gave up {totals.gave_up}, "
                f"errors {totals.errors}",
                flush=True,
            )
    return result


def start_etcd(
    lock_workloads: list[LockWorkload],
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    left_out: list[str],
) -> Etcd | None:
    """etcd for the lock workloads' peer rows, if any run and peers are wanted and it starts."""
    if not lock_workloads or not args.peers:
        return None
    try:
        return stack.enter_context(Etcd())
    except StoreMissing as e:
        left_out.append(f"etcd: {e}")
        print(f"!!! leaving out etcd: {e}", file=sys.stderr)
        return None


def wanted_variants(workloads: list[Workload], args: argparse.Namespace) -> list[str]:
    """The apps this run needs, in the order a round runs them (the lock workloads: lockstep)."""
    named = {LOCKSTEP} | {n for w in workloads for n in (HELLO, *w.peers)}
    if not args.peers:  # the quiet row is lockstep's own
        named &= {LOCKSTEP, HELLO, QUIET}
    if args.database_url:  # the floor is SQLite's: beside PostgreSQL it measures another thing
        named.discard(FLOOR)
    named |= {BASELINE} if args.baseline and workloads else set()
    return [n for n in VARIANTS if n in named]


def start_servers(
    names: list[str], args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack
) -> tuple[dict[str, Server], list[str]]:
    """Start every app in ``names`` (and their database servers); say which could not."""
    urls: dict[str, str] = {}
    left_out = []
    for store in dict.fromkeys(VARIANTS[n].store for n in names if VARIANTS[n].store):
        try:
            database = _store(store)
            stack.enter_context(database)
            urls[store] = database.url
        except StoreMissing as e:
            left_out.append(f"{store}: {e}")
            print(f"!!! leaving out {store}: {e}", file=sys.stderr)
    servers = {}
    for name in names:
        variant = VARIANTS[name]
        env = dict(variant.env)
        if variant.store:
            if variant.store not in urls:
                continue
            env[STORE_URL_ENV[variant.store]] = urls[variant.store]
        server = Server(
            name,
            workdir,
            app=variant.app,
            extra_args=args.gunicorn_arg,
            ready_path=variant.ready_path,
            env=env,
            root=variant.root,
        )
        server.launch()
        servers[name] = server
    stack.callback(Server.stop_all, list(servers.values()))
    for server in servers.values():
        server.wait_ready()
    return servers, left_out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline:
        add_baseline(args.baseline)
    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    names = {n for n in args.only.split(",") if n}
    workloads = [w for w in WORKLOADS if not names or w.name in names]
    lock_workloads = [w for w in LOCK_WORKLOADS if not names or w.name in names]
    failures: list[str] = []
    lock_failures: list[str] = []
    results: list[Result] = []
    lock_results: list[LockResult] = []
    started = time.time()
    load_before = os.getloadavg()
    if args.database_url:
        # Read by lockstep only; the other apps ignore it.
        os.environ["LOCKSTEP_DATABASE_URL"] = args.database_url
    with (
        tempfile.TemporaryDirectory(prefix="lockstep-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        servers, left_out = start_servers(wanted_variants(workloads, args), args, workdir, stack)
        for workload in workloads:
            results.append(run_workload(workload, servers, args, workdir, failures))
        # Started after the wrk workloads, so it never idles on the machine beside them.
        etcd = start_etcd(lock_workloads, args, stack, left_out)
        for lock_workload in lock_workloads:
            try:
                lock_results.append(
                    run_lock_workload(lock_workload, servers[LOCKSTEP], etcd, args, lock_failures)
                )
            except LockError as e:
                lock_failures.append(f"{lock_workload.name}: {e}")
                print(f"!!! {lock_workload.name} stopped: {e}", file=sys.stderr)
    load_after = os.getloadavg()
    print()
    for r in results:
        print(r.summary_line())
    for lock in lock_results:
        print(lock.summary_line())
    if not args.no_report:
        load = (load_before, load_after)
        write_report(args, results, failures, started, load, left_out, lock_results, lock_failures)
        print(f"\nwrote {args.out}" + (f" and {args.out.with_suffix('.png')}" if results else ""))
    if failures or lock_failures:
        print("\nBENCHMARK FAILED:", *failures, *lock_failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
