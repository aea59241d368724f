"""Shifts ``time.time`` in every process started with this directory on PYTHONPATH.

The offset in seconds is read from the file named by ``CLOCK_SHIFT_FILE`` on every call,
so a test can step the wall clock of running gunicorn workers; ``time.monotonic`` stays
as it is, as it does when an operator or NTP steps the system clock.
"""

import os
import time

_real_time = time.time
_shift_file = os.environ.get("CLOCK_SHIFT_FILE")


def _shifted_time() -> float:
    try:
        with open(_shift_file or "", encoding="ascii") as f:
            shift = float(f.read() or 0)
    except (OSError, ValueError):
        shift = 0.0
    return _real_time() + shift


if _shift_file:
    time.time = _shifted_time
