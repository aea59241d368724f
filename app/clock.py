"""Wall time for Idempotency-Key expiry that a step of the system clock cannot fool.

Keys are kept in the database with a wall-clock expiry time, because other workers, a
restarted service and other hosts must read it too. But the wall clock can be stepped
(an NTP correction, an operator, a VM resumed): forward, and every key looks expired at
once; a clock that was slow when a key was stored, corrected later, expires it early
just the same. Keys must never expire earlier than their TTL of real time.

So each process watches the offset between the wall clock and the monotonic one, which
never steps: a step shows as a change of that offset, and is logged loudly. Of all the
offsets seen since the process started, expiry is judged with the lowest (the clock
reading that makes keys look youngest) and new keys are stamped with the highest (the
one that makes them live longest). A key may then outlive its TTL by the size of a step,
never fall short of it — as far as this process can tell: one started after a step has
only the clock it found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

STEP_S = 1.0  # a change of the offset larger than this is a step, not a slewed drift


@dataclass(frozen=True, slots=True)
class KeyTimes:
    """The wall times one write transaction uses for Idempotency-Keys."""

    now: float  # a stored key is still valid while its expiry is after this
    expires_at: float  # when a key stored now expires


class ServiceClock:
    """Wall time corrected for steps seen while this process runs; sources injectable."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        offset = wall() - monotonic()
        self._lowest = self._highest = self._last = offset

    def _read(self) -> float:
        mono = self._monotonic()
        offset = self._wall() - mono
        if abs(offset - self._last) > STEP_S:
            logger.warning(
                "!!! the wall clock stepped by %+.1f s: Idempotency-Keys now expire by the"
                " slowest and are stamped by the fastest of the clocks seen since start !!!",
                offset - self._last,
            )
        self._last = offset
        self._lowest = min(self._lowest, offset)
        self._highest = max(self._highest, offset)
        return mono

    def key_times(self, ttl: float) -> KeyTimes:
        """Now for judging stored keys, and the expiry of a key stored now."""
        mono = self._read()
        return KeyTimes(mono + self._lowest, mono + self._highest + ttl)

    def expiry_now(self) -> float:
        """Now for judging stored keys (a purge deletes only keys expired by this)."""
        return self._read() + self._lowest
