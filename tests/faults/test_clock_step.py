"""Wall-clock steps under real gunicorn: Idempotency-Keys outlive them, and they are logged.

The service runs with ``clock_shift/sitecustomize.py``, which adds the number of seconds
in a file to ``time.time`` in every process; the test changes it while the workers run,
so their wall clock steps and their monotonic clock does not.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.support import Service

pytestmark = pytest.mark.slow

SHIFT = Path(__file__).with_name("clock_shift")
DAYS_2 = 2 * 86400


async def keyed_increment(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, bool]:
    """The value a keyed increment answers, and whether it was a replay (a fresh connection)."""
    headers = {"Idempotency-Key": key, "Connection": "close"}
    async with http.post(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["value"], r.headers.get("Idempotent-Replayed") == "true"


async def test_keys_survive_wall_clock_steps_both_ways(tmp_path: Path) -> None:
    """A key stored while the clock was 2 days slow still replays after the clock is put
    right, and one stored then still replays after the clock jumps 2 days ahead: the
    counters stay at 1, and each step is logged.

    Protection: app.clock judges expiry by the slowest and stamps keys by the fastest
    wall-minus-monotonic offset seen. With plain wall time both retries run again (2).
    """
    offset = tmp_path / "clock-shift"
    offset.write_text(str(-DAYS_2))
    env = {"PYTHONPATH": str(SHIFT), "CLOCK_SHIFT_FILE": str(offset)}
    with Service(tmp_path / "data", workers=2, env=env) as service:
        async with aiohttp.ClientSession() as http:
            slow = f"{service.url}/counters/slow/increment"
            assert await keyed_increment(http, slow, "stored-slow") == (1, False)
            offset.write_text("0")  # the clock is put right: 2 days forward
            for _ in range(4):  # fresh connections: either worker
                assert await keyed_increment(http, slow, "stored-slow") == (1, True)
            ahead = f"{service.url}/counters/ahead/increment"
            assert await keyed_increment(http, ahead, "stored-right") == (1, False)
            offset.write_text(str(DAYS_2))  # and now 2 days too far
            for _ in range(4):
                assert await keyed_increment(http, ahead, "stored-right") == (1, True)
                assert await keyed_increment(http, slow, "stored-slow") == (1, True)
    assert "the wall clock stepped by +172800" in service.log()
