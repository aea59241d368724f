"""A busy event loop, as under load: turns that each take longer than an idle one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from app.storage.batching import IDLE_TURN_S


async def busy_turns(turns: int, actions: list[Callable[[], Any]]) -> None:
    """For ``turns`` loop turns, keep the loop busy; in the first turns, run ``actions``."""
    for i in range(turns):
        await asyncio.sleep(0)
        deadline = time.perf_counter() + 20 * IDLE_TURN_S
        while time.perf_counter() < deadline:
            pass
        if i < len(actions):
            actions[i]()
