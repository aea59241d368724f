"""The service clock: wall-clock steps never make an Idempotency-Key expire early."""

from __future__ import annotations

import logging

import pytest

from app.clock import ServiceClock

DAY = 86400.0


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.mono = 50.0

    def pass_time(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def clock_on(c: Clocks) -> ServiceClock:
    return ServiceClock(wall=lambda: c.wall, monotonic=lambda: c.mono)


def test_forward_step_does_not_expire_keys(caplog: pytest.LogCaptureFixture) -> None:
    """After a 2-day forward step, a key stored an hour before is still judged unexpired,
    and the step is logged as a warning."""
    c = Clocks()
    clock = clock_on(c)
    stored = clock.key_times(DAY)
    c.pass_time(3600)
    c.wall += 2 * DAY
    with caplog.at_level(logging.WARNING, logger="app.clock"):
        now = clock.key_times(DAY).now
    assert stored.expires_at > now
    assert stored.expires_at - now == pytest.approx(DAY - 3600)
    assert "stepped by +172800.0 s" in caplog.text


def test_key_stored_on_a_slow_clock_lives_its_ttl_after_correction() -> None:
    """A key stored while the clock was 2 days slow is not expired once it is corrected;
    keys stored after the correction are stamped with the corrected (later) clock."""
    c = Clocks()
    c.wall -= 2 * DAY
    clock = clock_on(c)
    stored = clock.key_times(DAY)
    c.wall += 2 * DAY
    c.pass_time(DAY - 1)
    later = clock.key_times(DAY)
    assert stored.expires_at > later.now  # one second of its TTL is left
    assert later.expires_at == pytest.approx(c.wall + DAY)
    c.pass_time(2)
    assert stored.expires_at <= clock.expiry_now()  # and then it is over


def test_backward_step_keeps_keys_longer_not_shorter() -> None:
    """A backward step makes keys live longer, and new keys still get their full TTL."""
    c = Clocks()
    clock = clock_on(c)
    stored = clock.key_times(DAY)
    c.wall -= DAY
    after = clock.key_times(DAY)
    assert after.now < stored.now  # judged by the earlier clock
    assert after.expires_at == pytest.approx(stored.expires_at)  # stamped by the later one
