"""The benchmark's results: medians, targets, ``docs/benchmarks.md`` and the chart next to it."""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench.locks import ETCD, LOCK_APPS, LockResult
from bench.servers import HELLO, LOCKSTEP, REDIS_ALWAYS, VARIANTS
from bench.workloads import Target

# (req/s, p50 ms, p99 ms, workers' CPU µs per request) of one wrk run
Run = tuple[float, float, float, float]


@dataclass
class Result:
    """All rounds of one workload, for every variant that ran it (``bench.servers.VARIANTS``)."""

    name: str
    title: str
    targets: tuple[Target, ...] = ()
    runs: dict[str, list[Run]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # non-2xx/3xx answers, all rounds
    timeouts: dict[str, int] = field(default_factory=dict)  # requests wrk gave up on (2 s)
    # Per variant that counts: the rounds whose exactly-once check failed, and why.
    failed: dict[str, list[str]] = field(default_factory=dict)
    # Per round, wrk's connections per worker (largest first), lockstep's and hello's.
    splits: list[tuple[str, str]] = field(default_factory=list)

    def median(self, variant: str, i: int) -> float:
        return statistics.median(r[i] for r in self.runs[variant])

    def rate(self, variant: str = LOCKSTEP) -> float:
        return self.median(variant, 0)

    def ratio(self, variant: str = LOCKSTEP, of: str = HELLO) -> float:
        """``variant``'s median req/s over ``of``'s."""
        return self.rate(variant) / self.rate(of)

    def paired_ratio(self, variant: str = LOCKSTEP, of: str = HELLO) -> float:
        """The median over rounds of ``variant``'s req/s over ``of``'s in the same round.

        The runs of a round are back to back, so a slow spell of the shared machine weighs
        on both; the ratio of medians can pair one app's slow rounds with the other's fast.
        """
        pairs = zip(self.runs[variant], self.runs[of], strict=True)
        return statistics.median(s[0] / o[0] for s, o in pairs)

    def met(self, target: Target) -> bool | None:
        """Whether ``target`` holds (req/s: by both ratios); None when a side did not run."""
        if target.row not in self.runs or target.of not in self.runs:
            return None
        if target.measure == "p99":
            return self.median(target.row, 2) <= target.bound * self.median(target.of, 2)
        return min(self.ratio(target.row, target.of), self.paired_ratio(target.row, target.of)) >= (
            target.bound
        )

    def verdict(self) -> str:
        """lockstep's share-of-hello target, met or not."""
        for t in self.targets:
            if (t.row, t.of, t.measure) == (LOCKSTEP, HELLO, "rate"):
                return f"{'met' if self.met(t) else 'MISSED'} (≥ {t.bound:.2f})"
        return "—"

    def exactly_once(self, variant: str) -> str:
        if variant not in self.failed:
            return "—"
        failed = self.failed[variant]
        return f"FAILED ({len(failed)} of {len(self.runs[variant])})" if failed else "held"

    def summary_line(self) -> str:
        s, h = self.rate(), self.rate(HELLO)
        s99, h99 = self.median(LOCKSTEP, 2), self.median(HELLO, 2)
        return (
            f"{self.title:<42} lockstep {s:8.0f} req/s p99 {s99:6.1f} ms | "
            f"hello {h:8.0f} req/s p99 {h99:6.1f} ms | "
            f"{self.ratio():.2f}x (by round {self.paired_ratio():.2f}x)  {self.verdict()}"
        )


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.system()} {platform.release()} ({platform.machine()}), {cpu}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, aiohttp {version('aiohttp')}, gunicorn {version('gunicorn')}"
    )


def table(results: list[Result]) -> list[str]:
    """lockstep as ``make run`` starts it against hello world, one row per workload."""
    lines = [
        "| workload | lockstep req/s | hello req/s | share of hello | by round | target "
        "| lockstep p50 / p99 ms | hello p50 / p99 ms | CPU µs/request lockstep / hello "
        "| lockstep errors / timeouts |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r.median
        lines.append(
            f"| {r.title} | {r.rate():,.0f} | {r.rate(HELLO):,.0f} | {r.ratio():.2f} "
            f"| {r.paired_ratio():.2f} | {r.verdict()} "
            f"| {m(LOCKSTEP, 1):.1f} / {m(LOCKSTEP, 2):.1f} "
            f"| {m(HELLO, 1):.1f} / {m(HELLO, 2):.1f} "
            f"| {m(LOCKSTEP, 3):.0f} / {m(HELLO, 3):.0f} "
            f"| {r.errors[LOCKSTEP]} / {r.timeouts[LOCKSTEP]} |"
        )
    return lines


def peers_table(r: Result) -> list[str]:
    """Every variant that ran the workload, as shares of hello world and of durable Redis."""
    redis = REDIS_ALWAYS in r.runs
    lines = [
        f"**{r.title}**, every app in the same rounds:",
        "",
        "| app | req/s | share of hello | share of durable Redis | p50 / p99 ms "
        "| CPU µs/request | errors / timeouts | exactly-once |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in r.runs:
        m = r.median
        of_redis = f"{r.ratio(name, REDIS_ALWAYS):.2f}" if redis else "—"
        lines.append(
            f"| {VARIANTS[name].title} | {r.rate(name):,.0f} | {r.ratio(name):.2f} | {of_redis} "
            f"| {m(name, 1):.1f} / {m(name, 2):.1f} | {m(name, 3):.0f} "
            f"| {r.errors[name]} / {r.timeouts[name]} | {r.exactly_once(name)} |"
        )
    return [*lines, ""]


def target_lines(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        for t in r.targets:
            row, of = VARIANTS[t.row].title, VARIANTS[t.of].title
            met = r.met(t)
            if t.measure == "p99":
                text = f"p99 of {row} ≤ {t.bound:g}x {of}'s"
                got = "" if met is None else f"{r.median(t.row, 2) / r.median(t.of, 2):.2f}x"
            else:
                text = f"{row} ≥ {t.bound:.2f}x {of}"
                got = ""
                if met is not None:
                    by_round = r.paired_ratio(t.row, t.of)
                    got = f"{r.ratio(t.row, t.of):.2f}x (by round {by_round:.2f}x)"
            verdict = "not measured" if met is None else ("met" if met else "**MISSED**")
            lines.append(f"- {r.title} — {text}: {got} {verdict}".replace("  ", " "))
    return lines


def splits(results: list[Result]) -> list[str]:
    """Per round, how wrk's connections split between the two workers of each app."""
    lines = [
        "**wrk's connections per worker**, halfway through each round (lockstep | hello "
        "world). Each worker listens on a socket of its own (`LOCKSTEP_REUSE_PORT`) and the "
        "kernel deals connections out by hash; a split like 64/0 would halve lockstep's speed.",
        "",
    ]
    for r in results:
        rounds = ", ".join(f"{s} | {h}" for s, h in r.splits)
        lines.append(f"- {r.title}: {rounds}")
    return lines


def locks_section(
    results: list[LockResult], failures: list[str], args: argparse.Namespace
) -> list[str]:
    """The lock workloads: lockstep and etcd, cycles/s and their share, one row per service."""
    if not results and not failures:
        return []
    verdict = "**FAILED**: " + "; ".join(failures) if failures else "held in every run"
    both = any(ETCD in r.runs for r in results)
    services = "lockstep and etcd back to back in each round" if both else "lockstep alone"
    lines = [
        "## Locks",
        "",
        f"{args.connections} clients in one asyncio process, each looping acquire → release "
        f"for {args.duration:g} s, {args.rounds} rounds, {services}. Mutual exclusion (and the "
        f"API the clients expect): {verdict}.",
        "",
        "| workload | service | cycles/s | share of etcd | by round | p50 / p99 ms per cycle "
        "| CPU µs/cycle | gave up / errors | mutual exclusion |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for app in r.runs:
            m = r.median
            share = by_round = "—"
            if ETCD in r.runs:
                share, by_round = f"{r.ratio(app):.2f}", f"{r.paired_ratio(app):.2f}"
            lines.append(
                f"| {r.title} | {LOCK_APPS[app]} | {m(app, 0):,.0f} | {share} | {by_round} "
                f"| {m(app, 1):.1f} / {m(app, 2):.1f} | {m(app, 3):.0f} "
                f"| {r.gave_up[app]} / {r.errors[app]} | {r.exclusion(app)} |"
            )
    return [*lines, ""]


METHOD = """\
## Method

Every app runs under `config/gunicorn.conf.py` exactly as `make run` starts lockstep (same
worker class and count, access lines on and written to a file), on its own free loopback
port, and gets the same wrk Lua script; a round runs them back to back, so a slow spell of
the shared machine weighs on all of them. *Share of hello* is an app's median req/s over
hello world's; *by round* is the median of the rounds' own ratios, and a req/s target
counts as met only when both reach it. Hello world answers every request with a fixed text.
The peers are what a user would build instead: the durable floor (one SQLite commit per
batch of waiting requests and nothing else), and aiohttp apps doing one Redis `INCR` (on
`redis-server` with `appendfsync always`, durable, or `everysec`) or one PostgreSQL
`UPDATE … RETURNING` (asyncpg pool, `synchronous_commit` on) per request; the benchmark
starts those servers from their Debian packages on loopback ports and stops them after.
CPU µs/request counts the gunicorn workers only, not Redis's or PostgreSQL's. Exactly-once:
after every write run the counter (or the sum of record versions) grew by the number of 2xx
answers wrk counted, give or take the requests wrk cut off at the end (at most one per
connection). wrk gives up on a request after 2 s (a timeout).

The lock workloads are driven by `bench/locks.py`, not wrk (a release needs the token its
acquire answered): every client loops acquire → release, on one contended lock or on one of
1,000 picked at random (the same picks for both services). lockstep's cycle is `POST
/locks/{name}` (`ttl` 30, `wait` 10) and `DELETE` with the token in `If-Match`; etcd's is
`/v3/lock/lock` with a lease and `/v3/lock/unlock`, through the JSON gateway of a one-member
etcd (Debian `etcd-server`, fsyncing as shipped) started on loopback, each client holding
one lease for the run as etcd's `concurrency.Session` does. A cycle's time runs from its
first acquire attempt to the release's answer; *gave up* counts acquires that found the lock
still held after 10 s, *errors* 5xx answers and broken connections, both retried. CPU
µs/cycle counts lockstep's gunicorn workers or the etcd process. Mutual exclusion: per lock,
no client's acquire was answered while another client held it, and lockstep's fencing
tokens only grew.
"""


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["\n".join(textwrap.wrap(r.title.replace("/counters/{k}/", "…/"), 16)) for r in results]
    colors = ["#2a6", "#bbb", "#7c7", "#222", "#c33", "#e99", "#36a", "#b7e"]
    color = dict(zip(VARIANTS, colors, strict=False))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    labelled: set[str] = set()
    for x, r in enumerate(results):
        width = 0.8 / len(r.runs)
        for i, name in enumerate(r.runs):
            label = None if name in labelled else VARIANTS[name].title.replace("`", "")
            labelled.add(name)
            left = x - 0.4 + i * width
            bar = ax.bar(left + width / 2, r.rate(name), width, label=label, color=color[name])
            if name == LOCKSTEP:
                ax.bar_label(bar, [f"{r.ratio():.2f}x"], fontsize=8)
    ax.set_xticks(range(len(results)), names, fontsize=8)
    ax.set_ylabel("requests per second (median of rounds)")
    ax.set_title("lockstep, hello world and peers, same gunicorn settings (wrk)")
    ax.set_ylim(top=max(r.rate(n) for r in results for n in r.runs) * 1.35)
    ax.legend(loc="upper center", ncol=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _redact(url: str) -> str:
    """The database URL without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}{at}{host}" if at else url


def write_report(
    args: argparse.Namespace,
    results: list[Result],
    failures: list[str],
    started: float,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    left_out: list[str],
    lock_results: list[LockResult],
    lock_failures: list[str],
) -> None:
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    if results:
        chart(results, png)
    command = " ".join(["python -m bench.run", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    extra = " ".join(args.gunicorn_arg) or "none"
    verdict = "**FAILED**: " + "; ".join(failures) if failures else "held in every write run"
    database = (
        f"PostgreSQL at `{_redact(args.database_url)}`"
        if args.database_url
        else "fresh SQLite in a temp dir, `synchronous=FULL`"
    )
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); re-run it to refresh this page.",
        "",
        f"- **Date**: {when}",
        f"- **Machine**: {machine()}",
        f"- **Load average** before / after: {load[0][0]:.2f} / {load[1][0]:.2f} "
        "(other work on the machine makes absolute numbers noisy; the ratios are measured "
        "side by side and matter more)",
        f"- **Command**: `{command}`, i.e. for each workload {args.rounds} rounds of "
        f"`wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency -s "
        "bench/lua/<workload>.lua` against each app in turn",
        f"- **lockstep**: as `make run` starts it (2 workers, {database}, access lines on, "
        "to a file); extra gunicorn flags for every app: " + f"`{extra}`",
        f"- **Exactly-once**: {verdict}",
        *([f"- **Left out**: {'; '.join(left_out)}"] if left_out else []),
        "",
    ]
    if results:
        lines += [
            *table(results),
            "",
            "**Targets**:",
            "",
            *target_lines(results),
            "",
            *[line for r in results if len(r.runs) > 2 for line in peers_table(r)],
            f"![lockstep, hello world and peers]({png.name})",
            "",
            *splits(results),
            "",
        ]
    lines += [*locks_section(lock_results, lock_failures, args), METHOD]
    out.write_text("\n".join(lines))
