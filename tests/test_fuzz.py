"""Schemathesis against the live service: real gunicorn, 2 workers, every documented operation.

Bounded for CI by a fixed seed and ``FUZZ_EXAMPLES`` examples per operation (default 20);
``make fuzz`` runs the same test with many more.

Operations tagged ``streams`` (the Server-Sent Event streams) are left out: a successful
answer never ends, so every valid example would wait out the request timeout, and
schemathesis cannot check an endless body against a schema anyway. Their documented
answers are checked by hand in tests/test_streams_contract.py. Every other operation —
the dashboard page, its assets, /metrics and /stats included — runs with every check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.openapi import openapi_document
from app.routes import STREAMS_TAG
from app.tokens import add_token
from tests.conftest import settings_for
from tests.support import Service

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = (
    "not_a_server_error,status_code_conformance,response_schema_conformance,"
    "content_type_conformance,response_headers_conformance"
)
# Tokens come from the environment: a write token everywhere, the metrics scope's own token
# for /metrics (a write token only ever gets 403 there).
CONFIG = """
headers = { Authorization = "Bearer ${FUZZ_WRITE_TOKEN}" }

[[operations]]
include-path = "/metrics"
headers = { Authorization = "Bearer ${FUZZ_METRICS_TOKEN}" }
"""


@pytest.mark.slow
def test_fuzz_every_operation_finds_no_5xx_and_no_undocumented_answer(tmp_path: Path) -> None:
    """Generated valid and invalid requests get no 5xx and only documented, conforming answers."""
    tokens = tmp_path / "tokens.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    tokens_env = {
        "FUZZ_WRITE_TOKEN": add_token(tokens, "fuzz", "write"),
        "FUZZ_METRICS_TOKEN": add_token(tokens, "fuzz-metrics", "metrics"),
    }
    examples = os.environ.get("FUZZ_EXAMPLES", "20")
    seed = os.environ.get("FUZZ_SEED", "20261124")
    # Long polls of GET /changes, and acquires of a held lock, answer within half a second,
    # not the 60 s they may ask for.
    env = {
        "LOCKSTEP_TOKENS_FILE": str(tokens),
        "LOCKSTEP_CHANGES_MAX_WAIT": "0.5",
        "LOCKSTEP_LOCKS_MAX_WAIT": "0.5",
    }
    with Service(tmp_path / "data", workers=2, env=env) as svc:
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "--config-file",
                str(config),
                "run",
                f"{svc.url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                examples,
                "--seed",
                seed,
                "--exclude-tag",
                STREAMS_TAG,
                # A stream that slipped through fails this run instead of hanging it.
                "--request-timeout",
                "10",
                "--generation-database",
                "none",
                "--report-dir",
                str(tmp_path / "report"),
                "--no-color",
            ],
            cwd=tmp_path,
            env={**os.environ, **tokens_env},
            capture_output=True,
            text=True,
            timeout=float(os.environ.get("FUZZ_TIMEOUT", "240")),
        )
        log = svc.log()
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    # Exactly the streaming operations were left out; every other one was tried.
    ops = [op for item in openapi_document(settings_for(tmp_path))["paths"].values()
           for op in item.values()]  # fmt: skip
    streams = [op for op in ops if STREAMS_TAG in op.get("tags", ())]
    assert len(streams) == 5
    # schemathesis leaves out the operation serving the document it was pointed at.
    known = len(ops) - 1
    assert f"Selected: {known - len(streams)}/{known}" in run.stdout
    assert f"Tested: {known - len(streams)}" in run.stdout
    assert "unhandled error" not in log
