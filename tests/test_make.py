"""The Makefile's setup: `make run` installs the service's dependencies only, `make test` and
`make bench` the project with their extra, in one pip run each (checked with `make -n`,
which installs nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _pip_installs(target: str, venv: Path) -> list[str]:
    """What `make TARGET` would pass to `pip install` from a fresh clone (no .venv yet)."""
    run = subprocess.run(
        ["make", "--dry-run", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return re.findall(r"-m pip install --quiet (.+)", run.stdout)


def test_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    """A fresh `make run` installs the project without any extra (no test or bench tools)."""
    assert _pip_installs("run", tmp_path / "venv") == ["--upgrade pip", "-e ."]


def test_make_test_and_bench_install_the_project_with_their_extra_at_once(tmp_path: Path) -> None:
    """`make test` installs the project with its test extra in one pip run (the runtime
    dependencies come with it), `make bench` with the bench one."""
    fresh = tmp_path / "venv"
    assert _pip_installs("test", fresh) == ["--upgrade pip", "-e '.[test]'"]
    assert _pip_installs("bench", fresh) == ["--upgrade pip", "-e '.[bench]'"]
