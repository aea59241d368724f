"""The benchmark harness: its exactly-once check, and one short smoke round so it cannot rot."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import Result
from bench.run import has_errors
from bench.servers import ROOT
from bench.workloads import WORKLOADS, exactly_once_error
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
    result = Result("w", "workload", target=0.6)
    result.service = [(rate, 1.0, 2.0, 50.0) for rate in service]
    result.hello = [(rate, 1.0, 2.0, 50.0) for rate in hello]
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
    return report


@pytest.mark.slow
def test_bench_smoke_round_passes_exactly_once(tmp_path: Path) -> None:
    """One short round of every workload runs, holds exactly-once (the durable floor's too),
    and writes the table, the floor's table and the chart."""
    out = tmp_path / "benchmarks.md"
    report = _one_round(out)
    for workload in WORKLOADS:
        rows = [x for x in report.splitlines() if x.startswith(f"| {workload.title} |")]
        # The main table's row, and the floor table's for the workloads the floor serves.
        assert len(rows) == (2 if workload.floor else 1), rows
        if len(rows) == 2:
            assert float(rows[1].split("|")[2].replace(",", "")) > 0, rows[1]
        # Halfway through the round, each app's connections were found on its two workers.
        line = next(x for x in report.splitlines() if x.startswith(f"- {workload.title}: "))
        for split in line.partition(": ")[2].split(" | "):
            counts = [int(n) for n in split.split("/")]
            assert len(counts) == 2 and 0 < sum(counts) <= 16, line
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_bench_without_floor_reports_no_floor(tmp_path: Path) -> None:
    """``--no-floor`` runs lockstep and hello world only: the report has no floor table."""
    report = _one_round(tmp_path / "benchmarks.md", "--only=access", "--no-floor")
    assert "The durable floor" not in report
    assert len([x for x in report.splitlines() if x.startswith("| GET /access |")]) == 1
