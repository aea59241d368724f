"""A service that cannot start says why in one line and exits non-zero; a clean stop is quiet.

The slow cases run real gunicorn with config/gunicorn.conf.py, as ``make run`` starts it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import Service

# "<time> <LEVEL> [<pid>] <logger> " in front of a text log line.
_LOG_PREFIX = re.compile(r"^\S+ [A-Z]+ \[\d+\] \S+ ")


def assert_fails_with(service: Service, expected: str) -> None:
    """gunicorn exits non-zero and, besides its info lines, prints exactly ``expected``."""
    status = service.run_to_failure()
    log = service.log()
    assert status != 0, log
    assert "Traceback" not in log and "Task was destroyed" not in log, log
    problems = [_LOG_PREFIX.sub("", line) for line in log.splitlines() if " INFO " not in line]
    assert problems == [expected], log


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("LOCKSTEP_LOG_FORMAT", "yaml", "input should be 'text' or 'json'"),
        ("LOCKSTEP_SYNCHRONOUS", "bogus", "input should be 'FULL' or 'NORMAL'"),
    ],
)
def test_start_with_invalid_setting_names_variable_value_and_allowed(
    tmp_path: Path, variable: str, value: str, allowed: str
) -> None:
    """An invalid LOCKSTEP_ value stops gunicorn with one line: variable, value, what is allowed."""
    service = Service(tmp_path / "data", env={variable: value})
    assert_fails_with(service, f"lockstep: invalid setting {variable}={value}: {allowed}")
