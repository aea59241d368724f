"""The writer turn between processes: exclusive, woken on release, and never waited for forever.

Two ``WriterTurn``s on one file open it twice, so they exclude each other as two workers do.
"""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest

from app.storage.sqlite_turn import STALLED_WAIT_S, TurnTimeout, WriterTurn


def test_turn_held_elsewhere_times_out_then_fails_fast_until_released(tmp_path: Path) -> None:
    """A held turn makes a waiter give up after its timeout, later waiters after a moment
    only, and once the holder lets go the turn is had again at once."""
    path = str(tmp_path / "turn")
    holder, waiter = WriterTurn(path, 1.0), WriterTurn(path, 0.3)
    try:
        holder.acquire()
        started = time.monotonic()
        with pytest.raises(TurnTimeout):
            waiter.acquire()
        assert 0.3 <= time.monotonic() - started < 1.0
        started = time.monotonic()
        with pytest.raises(TurnTimeout):
            waiter.acquire()
        assert time.monotonic() - started < STALLED_WAIT_S + 0.2
        fcntl.flock(holder.fd, fcntl.LOCK_UN)
        deadline = time.monotonic() + 5
        while True:  # the helper thread takes the released lock, and hands it on or lets go
            try:
                with waiter.held():
                    break
            except TurnTimeout:
                assert time.monotonic() < deadline
    finally:
        holder.close()
        waiter.close()


def test_waiter_gets_the_turn_when_the_holder_lets_go_and_keeps_it(tmp_path: Path) -> None:
    """A writer waiting for a held turn gets it when the holder releases it, and holds it
    exclusively until it lets go (the helper thread that waited never drops it)."""
    path = str(tmp_path / "turn")
    holder, waiter = WriterTurn(path, 5.0), WriterTurn(path, 5.0)
    try:
        holder.acquire()
        threading.Timer(0.1, fcntl.flock, (holder.fd, fcntl.LOCK_UN)).start()
        for _ in range(3):
            with waiter.held():
                time.sleep(0.05)  # the helper thread runs meanwhile
                with pytest.raises(TurnTimeout):
                    _try(holder)
    finally:
        holder.close()
        waiter.close()


def _try(turn: WriterTurn) -> None:
    try:
        fcntl.flock(turn.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        raise TurnTimeout("held") from e
    fcntl.flock(turn.fd, fcntl.LOCK_UN)
    raise AssertionError("the turn was free while its writer held it")
