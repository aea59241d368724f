"""The benchmark harness: its exactly-once check, and short real rounds of GET /access and of the
lock workloads so it cannot rot (``make soak`` runs a round of every workload and peer)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.locks import ETCD, LOCK_APPS, LOCK_WORKLOADS
from bench.report import Result
from bench.run import has_errors, parse_args, wanted_variants
from bench.servers import FLOOR, HELLO, LOCKSTEP, QUIET, REDIS_ALWAYS, ROOT, VARIANTS
from bench.workloads import WORKLOADS, Target, exactly_once_error
from tests.conftest import unavailable


def test_exactly_once_check_accepts_matching_tally() -> None:
    """A tally that grew by the 2xx count, or by up to one per connection more, passes."""
    assert exactly_once_error(before=10, after=110, ok=100, connections=8) is None
    assert exactly_once_error(before=10, after=118, ok=100, connections=8) is None


def test_exactly_once_check_rejects_lost_writes() -> None:
    """Fewer applied writes than 2xx answers is reported as lost writes."""
    error = exactly_once_error(before=10, after=109, ok=100, connections=8)
    assert error is not None
    assert "lost writes" in error


def test_exactly_once_check_rejects_doubled_writes() -> None:
    """More applied writes than 2xx answers plus cut-off connections is reported as doubled."""
    error = exactly_once_error(before=10, after=119, ok=100, connections=8)
    assert error is not None
    assert "doubled writes" in error


def test_wrk_socket_errors_are_reported_like_error_statuses() -> None:
    clean = {"requests": 10, "non_2xx_3xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert not has_errors(clean)
    # A reset connection can lose the answer to an applied request: worth a line.
    for kind in ("non_2xx_3xx", "connect", "read", "write", "timeout"):
        assert has_errors({**clean, kind: 1}), kind


def _result(service: list[float], hello: list[float]) -> Result:
    result = Result("w", "workload", (Target(LOCKSTEP, HELLO, 0.6),))
    result.runs[LOCKSTEP] = [(rate, 1.0, 2.0, 50.0) for rate in service]
    result.runs[HELLO] = [(rate, 1.0, 2.0, 50.0) for rate in hello]
    return result


def test_verdict_needs_the_round_by_round_ratio_too() -> None:
    """Slow hello rounds beside fast lockstep ones lift the ratio of medians, not the verdict."""
    # Per round 0.5, 0.94, 0.5: the medians give 16,000 / 22,000 = 0.73x.
    result = _result([16_000, 16_000, 11_000], [32_000, 17_000, 22_000])
    assert round(result.ratio(), 2) == 0.73
    assert result.paired_ratio() == 0.5
    assert result.verdict().startswith("MISSED")


def test_verdict_met_when_both_ratios_reach_the_target() -> None:
    result = _result([13_000, 12_000, 14_000], [20_000, 19_000, 21_000])
    assert min(result.ratio(), result.paired_ratio()) >= 0.6
    assert result.verdict() == "met (≥ 0.60)"


def test_targets_against_a_peer_and_on_p99() -> None:
    """A target against another row compares with that row; a p99 target bounds the median
    p99; a target whose other row did not run is not measured rather than met."""
    result = _result([13_000, 12_000, 14_000], [20_000, 19_000, 21_000])
    result.runs[REDIS_ALWAYS] = [(9_000, 1.0, 2.0, 50.0)] * 3
    assert result.met(Target(LOCKSTEP, REDIS_ALWAYS, 1.4)) is True
    assert result.met(Target(LOCKSTEP, REDIS_ALWAYS, 1.5)) is False
    result.runs[LOCKSTEP] = [(13_000, 1.0, p99, 50.0) for p99 in (5.0, 7.0, 9.0)]
    assert result.met(Target(LOCKSTEP, HELLO, 3.0, "p99")) is False  # 7.0 > 3 x 2.0
    assert result.met(Target(LOCKSTEP, HELLO, 3.5, "p99")) is True
    assert result.met(Target(QUIET, HELLO, 0.55)) is None


NO_WRK = "wrk is not installed (apt-get install wrk; scripts/system-deps.sh does it in CI)"


def _one_round(out: Path, *flags: str) -> str:
    """One short round of ``bench.run`` with ``flags``: its report, exactly-once held."""
    if shutil.which("wrk") is None:
        unavailable(NO_WRK)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.run", *flags),
            *("--rounds=1", "--duration=1", "--connections=16", f"--out={out}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "EXACTLY-ONCE FAILED" not in done.stdout
    report = out.read_text()
    assert "Exactly-once**: held in every write run" in report
    if "Left out" in report:
        unavailable(next(x for x in report.splitlines() if "Left out" in x))
    return report


def _rows(report: str, title: str) -> list[str]:
    return [x for x in report.splitlines() if x.startswith(f"| {title} |")]


@pytest.mark.slow
def test_bench_access_round_without_peers_holds_exactly_once(tmp_path: Path) -> None:
    """One short round of GET /access with ``--no-peers`` runs lockstep, its quiet row and
    hello world, and with ``--baseline`` another checkout (here this one) beside them; holds
    exactly-once, and writes the table, the split line and the chart."""
    out = tmp_path / "benchmarks.md"
    report = _one_round(out, "--only=access", "--no-peers", f"--baseline={ROOT}")
    [row] = _rows(report, "GET /access")
    assert float(row.split("|")[2].replace(",", "")) > 0, row
    for name in (LOCKSTEP, HELLO, QUIET):
        [row] = _rows(report, VARIANTS[name].title)
        assert [c.strip() for c in row.split("|")][-2] == ("—" if name == HELLO else "held"), row
    [row] = [x for x in report.splitlines() if x.startswith("| lockstep at ")]
    assert [c.strip() for c in row.split("|")][-2] == "held", row
    assert any(x.startswith("- GET /access: ") for x in report.splitlines())
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def _lock_rows_held(report: str) -> None:
    """Each lock workload has a row for lockstep and for etcd, with cycles, exclusion held."""
    for workload in LOCK_WORKLOADS:
        rows = _rows(report, workload.title)
        assert [r.split("|")[2].strip() for r in rows] == [LOCK_APPS[LOCKSTEP], LOCK_APPS[ETCD]]
        for row in rows:
            cells = [c.strip() for c in row.split("|")]
            assert float(cells[3].replace(",", "")) > 0, row
            assert cells[-2] == "held", row


@pytest.mark.slow
def test_bench_lock_round_holds_mutual_exclusion_beside_etcd(tmp_path: Path) -> None:
    """One short round of both lock workloads cycles lockstep's /locks and etcd's lock, with
    no two clients ever holding one lock, and writes both services' rows."""
    report = _one_round(tmp_path / "benchmarks.md", "--only=lock-one,lock-1000")
    assert "(and the API the clients expect): held in every run." in report
    assert "lockstep and etcd back to back in each round" in report
    _lock_rows_held(report)


@pytest.mark.slow
@pytest.mark.soak
def test_bench_smoke_round_passes_exactly_once(tmp_path: Path) -> None:
    """One short round of every workload runs lockstep, hello world and every peer its
    workload names, holds exactly-once in every write row, and writes the tables, the
    targets and the chart."""
    out = tmp_path / "benchmarks.md"
    report = _one_round(out)
    for workload in WORKLOADS:
        assert len(_rows(report, workload.title)) == 1, workload.title
        # Halfway through the round, each app's connections were found on its two workers.
        line = next(x for x in report.splitlines() if x.startswith(f"- {workload.title}: "))
        for split in line.partition(": ")[2].split(" | "):
            counts = [int(n) for n in split.split("/")]
            assert len(counts) == 2 and 0 < sum(counts) <= 16, line
        if workload.peers:
            table = report.partition(f"**{workload.title}**, every app")[2].split("\n\n")[1]
            for name in (LOCKSTEP, HELLO, *workload.peers):
                [row] = _rows(table, VARIANTS[name].title)
                cells = [c.strip() for c in row.split("|")]
                assert float(cells[2].replace(",", "")) > 0, row
                assert cells[-2] == ("—" if name == HELLO else "held"), row
    _lock_rows_held(report)
    assert "- GET /access — lockstep as `make run` starts it ≥ 1.50x aiohttp + Redis" in report
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_no_peers_keeps_lockstep_its_quiet_row_and_hello() -> None:
    """``--no-peers`` runs lockstep (with its quiet row) and hello world only, a lockstep on
    PostgreSQL never gets the SQLite floor beside it, and lock workloads alone start lockstep."""
    access = [w for w in WORKLOADS if w.name == "access"]
    assert wanted_variants(access, parse_args(["--no-peers"])) == [LOCKSTEP, HELLO, QUIET]
    assert wanted_variants(access, parse_args([])) == list(VARIANTS)
    on_postgres = parse_args(["--database-url=postgresql://x@y/z"])
    assert FLOOR not in wanted_variants(WORKLOADS, on_postgres)
    assert wanted_variants([], parse_args([])) == [LOCKSTEP]  # the lock workloads' only app
