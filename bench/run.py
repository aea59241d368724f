"""``make bench``: lockstep against aiohttp hello world, same gunicorn settings, driven by wrk.

For every round and every workload, wrk drives lockstep and then the hello-world app with
the very same Lua script (A B A B ...), so both see the same machine noise. The report
gives the median req/s, p50 and p99 of the rounds and lockstep's share of hello world's
req/s. After every write run the exactly-once check of ``bench.workloads`` must hold, or
the benchmark fails (exit status 1) whatever the speed.

    python -m bench.run [--rounds 3] [--duration 5] [--connections 64] [--only access,read]
                        [--no-floor]

The counter workloads (``Workload.floor``) also run a third app in every round:
``bench.floor``, the least a durably counted hit or increment can cost (one commit per
batch and nothing else), so the report shows what the machine's fsync costs apart from
what lockstep's own code costs. ``--no-floor`` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Result, Run, write_report
from bench.servers import FLOOR_APP, HELLO_APP, ROOT, Server
from bench.workloads import WORKLOADS, Workload, exactly_once_error


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
    p.add_argument("--only", default="", help="comma-separated workload names to run")
    p.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        help="extra gunicorn flag for BOTH apps, e.g. --gunicorn-arg=--worker-class=...",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        help="LOCKSTEP_LOG_LEVEL for both apps (default warning: no per-request lines, "
        "as hello world has none; info is make run's default)",
    )
    p.add_argument(
        "--database-url",
        default="",
        help="LOCKSTEP_DATABASE_URL for lockstep, e.g. postgresql://... (default: SQLite)",
    )
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the durable floor (bench/floor.py) in every round of the counter workloads "
        "(default; never with --database-url)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-report", action="store_true", help="print only; write no files")
    return p.parse_args(argv)


def has_errors(totals: dict[str, int]) -> bool:
    """Whether wrk saw error statuses, timeouts, or socket errors (each reset reconnects)."""
    return any(totals[k] for k in ("non_2xx_3xx", "timeout", "connect", "read", "write"))


def run_workload(
    workload: Workload,
    service: Server,
    hello: Server,
    args: argparse.Namespace,
    workdir: Path,
    failures: list[str],
    floor: Server | None = None,
) -> Result:
    result = Result(workload.name, workload.title, workload.target)
    if workload.setup is not None:
        workload.setup(service.url)
    for round_no in range(1, args.rounds + 1):
        before = workload.tally(service.url) if workload.tally else 0
        totals, service_split = wrk(service, workload, args, workdir)
        if workload.tally is not None:
            ok = totals["requests"] - totals["non_2xx_3xx"]
            error = exactly_once_error(before, workload.tally(service.url), ok, args.connections)
            if error is None and workload.final_check is not None:
                error = workload.final_check(service.url)
            if error is not None:
                failures.append(f"{workload.name} round {round_no}: {error}")
                print(f"!!! EXACTLY-ONCE FAILED: {workload.name}: {error}: {totals}", flush=True)
        # Errors are reported, not failed on: a 503 under overload is correct behaviour.
        result.errors += totals["non_2xx_3xx"]
        result.timeouts += totals["timeout"]
        if has_errors(totals):
            print(f"!!! ERRORS (reported): {workload.name}: {totals}", flush=True)
        hello_totals, hello_split = wrk(hello, workload, args, workdir)
        if floor is not None:
            assert workload.tally is not None  # the floor runs counter workloads only
            before = workload.tally(floor.url)
            floor_totals, _ = wrk(floor, workload, args, workdir)
            ok = floor_totals["requests"] - floor_totals["non_2xx_3xx"]
            error = exactly_once_error(before, workload.tally(floor.url), ok, args.connections)
            if error is not None:
                failures.append(f"floor {workload.name} round {round_no}: {error}")
                print(f"!!! EXACTLY-ONCE FAILED: floor: {error}: {floor_totals}", flush=True)
            elif has_errors(floor_totals):
                print(f"!!! ERRORS (reported): floor: {workload.name}: {floor_totals}", flush=True)
            result.floor.append(measure(floor_totals))
            f = result.floor[-1]
            print(f"{'':>15}   floor {f[0]:8.0f} req/s p99 {f[2]:6.1f} ms {f[3]:4.0f} µs CPU")
        result.service.append(measure(totals))
        result.hello.append(measure(hello_totals))
        result.splits.append((service_split, hello_split))
        s, h = result.service[-1], result.hello[-1]
        print(
            f"{workload.name:>15} round {round_no}: lockstep {s[0]:8.0f} req/s "
            f"p99 {s[2]:6.1f} ms {s[3]:4.0f} µs CPU {service_split:>5} | "
            f"hello {h[0]:8.0f} req/s p99 {h[2]:6.1f} ms {h[3]:4.0f} µs CPU {hello_split:>5} "
            f"| {s[0] / h[0]:.2f}x",
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    names = {n for n in args.only.split(",") if n}
    workloads = [w for w in WORKLOADS if not names or w.name in names]
    failures: list[str] = []
    results: list[Result] = []
    started = time.time()
    load_before = os.getloadavg()
    os.environ["LOCKSTEP_LOG_LEVEL"] = args.log_level  # read by config/gunicorn.conf.py
    if args.database_url:
        # Read by lockstep only; the hello world app ignores it.
        os.environ["LOCKSTEP_DATABASE_URL"] = args.database_url
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as tmp:
        workdir = Path(tmp)
        extra = args.gunicorn_arg
        service = Server("lockstep", workdir, extra_args=extra)
        hello = Server("hello", workdir, app=HELLO_APP, extra_args=extra, ready_path="/")
        # The floor is SQLite's: beside lockstep on PostgreSQL it would measure another thing.
        wants_floor = args.floor and not args.database_url and any(w.floor for w in workloads)
        floor = Server("floor", workdir, app=FLOOR_APP, extra_args=extra) if wants_floor else None
        with service, hello, floor or contextlib.nullcontext():
            for workload in workloads:
                runs_floor = floor if workload.floor else None
                results.append(
                    run_workload(workload, service, hello, args, workdir, failures, runs_floor)
                )
    load_after = os.getloadavg()
    print()
    for r in results:
        print(r.summary_line())
    if not args.no_report:
        write_report(args, results, failures, started, (load_before, load_after))
        print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    if failures:
        print("\nBENCHMARK FAILED:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
