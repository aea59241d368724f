"""The workers' turn at writing to SQLite: an exclusive ``flock``, waited for at most a deadline.

Workers take turns through a lock file beside the database before each write transaction
(see ``app.storage.sqlite._run_batch`` for why: a writer blocked in ``flock`` is woken by
the kernel the moment the holder lets go, where SQLite's busy handler sleeps and polls).
``flock`` itself has no timeout, and a holder that is stopped (SIGSTOP, a debugger, a
frozen VM) but not dead would hold every other worker's writes for as long as it stays
stopped. So an uncontended turn is taken with a non-blocking ``flock`` on the writer's
thread, and a contended one is waited for by a helper thread that blocks in ``flock``
while the writer waits on a condition for at most ``LOCKSTEP_BUSY_TIMEOUT_MS``; past it
the batch fails with ``TurnTimeout`` (503). If the helper gets the lock after its writer
gave up, it lets it go at once. Until it does get it, later batches wait only
``STALLED_WAIT_S``: otherwise each batch queued behind the first would wait the whole
timeout again, and a request's wait would grow with the batches ahead of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from app.errors import StorageUnavailable

STALLED_WAIT_S = 0.05  # how long a batch waits for a turn that already made one time out


class TurnTimeout(StorageUnavailable):
    """Another process held the write turn for longer than the busy timeout."""


class WriterTurn:
    """Exclusive turns at writing among this database's processes, with a bounded wait."""

    def __init__(self, path: str, timeout: float) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.timeout = timeout
        self._cond = threading.Condition()
        self._wanted = False  # a writer waits for the helper to get the lock
        self._granted = False  # the helper got it for that writer
        self._blocked = False  # the helper is inside a blocking flock
        self._closed = False
        self._stalled = False  # a wait timed out, and the helper has not had the lock since
        self._helper: threading.Thread | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the turn for the block; raises ``TurnTimeout`` if it cannot be had in time."""
        self.acquire()
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def acquire(self) -> None:
        with self._cond:
            # While the helper is blocked in flock on this same open file, a lock taken
            # here would be the helper's too, and it might let it go under our feet.
            if not self._blocked:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    pass
            self._wanted = True
            if self._helper is None:
                self._helper = threading.Thread(
                    target=self._wait_for_turns, name="lockstep-writer-turn", daemon=True
                )
                self._helper.start()
            self._cond.notify_all()
            wait = min(self.timeout, STALLED_WAIT_S) if self._stalled else self.timeout
            got = self._cond.wait_for(lambda: self._granted, wait)
            self._wanted = False
            self._granted = False
            self._stalled = not got
        if not got:
            raise TurnTimeout(
                f"database: another worker has held the write turn for {self.timeout:g} s"
                " (LOCKSTEP_BUSY_TIMEOUT_MS); nothing was changed"
            )

    def _wait_for_turns(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted or self._closed)
                if self._closed:
                    return
                self._blocked = True
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            with self._cond:
                self._blocked = False
                self._stalled = False
                if self._wanted and not self._closed:
                    self._granted = True
                    self._cond.notify_all()
                    # Until its writer has taken the grant: a flock of ours after that
                    # would succeed on the writer's own lock, and the LOCK_UN below undo it.
                    self._cond.wait_for(lambda: not self._granted or self._closed)
                    continue
                fcntl.flock(self.fd, fcntl.LOCK_UN)  # its writer gave up meanwhile
                if self._closed:
                    os.close(self.fd)
                    return

    def close(self) -> None:
        """Release the file; a helper still blocked in flock closes it once it returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if not self._blocked:
                os.close(self.fd)
