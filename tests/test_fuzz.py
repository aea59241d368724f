"""Schemathesis against the live service: real gunicorn, 2 workers, every documented operation.

Bounded for CI by a fixed seed and ``FUZZ_EXAMPLES`` examples per operation (default 20);
``make fuzz`` runs the same test with many more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.tokens import add_token
from tests.support import Service

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = (
    "not_a_server_error,status_code_conformance,response_schema_conformance,"
    "content_type_conformance,response_headers_conformance"
)


@pytest.mark.slow
def test_fuzz_every_operation_finds_no_5xx_and_no_undocumented_answer(tmp_path: Path) -> None:
    """Generated valid and invalid requests get no 5xx and only documented, conforming answers."""
    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "fuzz", "write")
    examples = os.environ.get("FUZZ_EXAMPLES", "20")
    seed = os.environ.get("FUZZ_SEED", "20261124")
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens)}
    with Service(tmp_path / "data", workers=2, env=env) as svc:
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{svc.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                examples,
                "--seed",
                seed,
                "--generation-database",
                "none",
                "--report-dir",
                str(tmp_path / "report"),
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=float(os.environ.get("FUZZ_TIMEOUT", "240")),
        )
        log = svc.log()
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    assert "unhandled error" not in log
