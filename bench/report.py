"""The benchmark's results: medians, ``docs/benchmarks.md`` and the chart next to it."""

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

# Findings kept across runs: appended to every generated report.
NOTES = Path(__file__).resolve().parent / "notes.md"

# (req/s, p50 ms, p99 ms, workers' CPU µs per request) of one wrk run
Run = tuple[float, float, float, float]


@dataclass
class Result:
    """All rounds of one workload, for lockstep and for hello world."""

    name: str
    title: str
    target: float | None
    service: list[Run] = field(default_factory=list)
    hello: list[Run] = field(default_factory=list)
    errors: int = 0  # lockstep's non-2xx/3xx answers, all rounds
    timeouts: int = 0  # lockstep's requests wrk gave up on (2 s), all rounds
    # Per round, wrk's connections per worker (largest first), lockstep's and hello's.
    splits: list[tuple[str, str]] = field(default_factory=list)
    # The durable floor's runs (bench.floor), in the same rounds: counter workloads only.
    floor: list[Run] = field(default_factory=list)

    @staticmethod
    def _median(runs: list[Run], i: int) -> float:
        return statistics.median(r[i] for r in runs)

    def rate(self) -> tuple[float, float]:
        return self._median(self.service, 0), self._median(self.hello, 0)

    def p50(self) -> tuple[float, float]:
        return self._median(self.service, 1), self._median(self.hello, 1)

    def p99(self) -> tuple[float, float]:
        return self._median(self.service, 2), self._median(self.hello, 2)

    def cpu(self) -> tuple[float, float]:
        return self._median(self.service, 3), self._median(self.hello, 3)

    def ratio(self) -> float:
        """lockstep's median req/s over hello world's."""
        service, hello = self.rate()
        return service / hello

    def paired_ratio(self) -> float:
        """The median over rounds of lockstep's req/s over hello's in the same round.

        The two runs of a round are back to back, so a slow spell of the shared machine
        weighs on both; the ratio of medians can pair one app's slow rounds with the
        other's fast ones.
        """
        pairs = zip(self.service, self.hello, strict=True)
        return statistics.median(s[0] / h[0] for s, h in pairs)

    def verdict(self) -> str:
        """A target counts as met only when both ratios reach it."""
        if self.target is None:
            return "—"
        met = min(self.ratio(), self.paired_ratio()) >= self.target
        return f"{'met' if met else 'MISSED'} (≥ {self.target:.2f})"

    def summary_line(self) -> str:
        (s, h), (s99, h99), (sc, hc) = self.rate(), self.p99(), self.cpu()
        return (
            f"{self.title:<42} lockstep {s:8.0f} req/s p99 {s99:6.1f} ms {sc:4.0f} µs | "
            f"hello {h:8.0f} req/s p99 {h99:6.1f} ms {hc:4.0f} µs | "
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


def floor_table(results: list[Result]) -> list[str]:
    """The durable floor beside hello world and lockstep, for the workloads it ran in."""
    ran = [r for r in results if r.floor]
    if not ran:
        return []
    lines = [
        "**The durable floor** (`bench/floor.py`: one upsert `... RETURNING` committed per "
        "batch of waiting requests and nothing else; `--no-floor` leaves it out), in the "
        "same rounds:",
        "",
        "| workload | floor req/s | floor share of hello | lockstep share of floor "
        "| CPU µs/request lockstep / floor / hello | floor p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in ran:
        (s, h), (sc, hc) = r.rate(), r.cpu()
        f, fc, f99 = (Result._median(r.floor, i) for i in (0, 3, 2))
        lines.append(
            f"| {r.title} | {f:,.0f} | {f / h:.2f} | {s / f:.2f} "
            f"| {sc:.0f} / {fc:.0f} / {hc:.0f} | {f99:.1f} |"
        )
    return [*lines, ""]


def table(results: list[Result]) -> list[str]:
    lines = [
        "| workload | lockstep req/s | hello req/s | share of hello | by round | target "
        "| lockstep p50 / p99 ms | hello p50 / p99 ms | CPU µs/request lockstep / hello "
        "| lockstep errors / timeouts |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        (s, h), (s50, h50), (s99, h99), (sc, hc) = r.rate(), r.p50(), r.p99(), r.cpu()
        lines.append(
            f"| {r.title} | {s:,.0f} | {h:,.0f} | {r.ratio():.2f} | {r.paired_ratio():.2f} "
            f"| {r.verdict()} "
            f"| {s50:.1f} / {s99:.1f} | {h50:.1f} / {h99:.1f} | {sc:.0f} / {hc:.0f} "
            f"| {r.errors} / {r.timeouts} |"
        )
    return lines


def splits(results: list[Result]) -> list[str]:
    """Per round, how wrk's connections split between the two workers of each app."""
    lines = [
        "**wrk's connections per worker**, halfway through each round (lockstep | hello "
        "world). gunicorn's workers race to accept them, so the split differs from run to "
        "run. When one worker holds nearly all of them, lockstep does a quarter to a third "
        "fewer req/s (that worker's event loop and commits do all the work); hello world "
        "loses less, a tenth to a fifth at 61/3. A split near even is no faster than the "
        "usual one near 3:1 (measured by forcing even splits). So a lockstep round far "
        "below the others usually shows a split like 64/0 here, not a change in the service.",
        "",
    ]
    for r in results:
        rounds = ", ".join(f"{s} | {h}" for s, h in r.splits)
        lines.append(f"- {r.title}: {rounds}")
    return lines


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["\n".join(textwrap.wrap(r.title.replace("/counters/{k}/", "…/"), 16)) for r in results]
    xs = range(len(results))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.38
    hello = [r.rate()[1] for r in results]
    service = [r.rate()[0] for r in results]
    ax.bar([x - width / 2 for x in xs], hello, width, label="aiohttp hello world", color="#bbb")
    bars = ax.bar([x + width / 2 for x in xs], service, width, label="lockstep", color="#2a6")
    for bar, r in zip(bars, results, strict=True):
        ax.annotate(
            f"{r.ratio():.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    # The durable floor, where it ran: a line across lockstep's bar at the floor's req/s.
    floored = [(x, r) for x, r in zip(xs, results, strict=True) if r.floor]
    if floored:
        ax.hlines(
            [Result._median(r.floor, 0) for _, r in floored],
            [x for x, _ in floored],
            [x + width for x, _ in floored],
            colors="#222",
            linestyles="dashed",
            label="durable floor (bench/floor.py)",
        )
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("requests per second (median of rounds)")
    ax.set_title("lockstep vs aiohttp hello world, same gunicorn settings (wrk)")
    ax.set_ylim(top=max(hello + service) * 1.2)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=3, fontsize=8)
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
) -> None:
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    chart(results, png)
    command = " ".join(["python -m bench.run", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    extra = " ".join(args.gunicorn_arg) or "none"
    verdict = "**FAILED**: " + "; ".join(failures) if failures else "held in every write run"
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
        "bench/lua/<workload>.lua`, lockstep then hello world, alternating",
        "- **Servers**: `gunicorn --config config/gunicorn.conf.py` (as `make run`, 2 workers, "
        + (
            f"PostgreSQL at `{_redact(args.database_url)}`"
            if args.database_url
            else "fresh SQLite in a temp dir, `synchronous=FULL`"
        )
        + ") and, with the same config, "
        f"`{'bench.hello:create_app'}`; extra gunicorn flags for both: `{extra}`",
        f"- **Logging**: `LOCKSTEP_LOG_LEVEL={args.log_level}` for both apps; gunicorn's "
        "access log is off in the config for both",
        f"- **Exactly-once**: {verdict}",
        "",
        *table(results),
        "",
        f"![lockstep vs hello world]({png.name})",
        "",
        "The share of hello is lockstep's median req/s over hello world's median req/s from "
        "the same run; *by round* is the median of the rounds' own ratios (lockstep's req/s "
        "over hello's in the same round, run back to back). A target counts as met only when "
        "both reach it. Hello world answers every request of the same wrk script with a fixed "
        "text. Exactly-once: after each write run, the counter (or the sum of record versions) "
        "grew by the number of 2xx answers wrk counted, give or take the requests wrk cut off "
        "at the end (at most one per connection). Errors and timeouts are counted over all "
        "rounds; wrk gives up on a request after 2 s.",
        "",
        *splits(results),
        "",
        *floor_table(results),
        *NOTES.read_text().splitlines(),
        "",
    ]
    out.write_text("\n".join(lines))
