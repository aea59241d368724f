"""The Makefile's setup: `make run` installs the service's dependencies only, `make test` and
`make bench` add their extras on top (checked with `make -n`, which installs nothing)."""

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


def test_make_test_and_bench_add_their_extras_to_the_runtime_install(tmp_path: Path) -> None:
    """`make test` adds the test extra after the runtime install, `make bench` the bench one."""
    assert _pip_installs("test", tmp_path / "venv") == ["--upgrade pip", "-e .", "-e '.[test]'"]
    assert _pip_installs("bench", tmp_path / "venv") == ["--upgrade pip", "-e .", "-e '.[bench]'"]
