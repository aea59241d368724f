"""The gunicorn worker lockstep runs: how it takes signals while it boots, and how a worker
that cannot start is reported: once.

It is aiohttp's uvloop worker with two changes. First, signals before the event loop runs:
aiohttp installs its handlers through the loop, and uvloop, until its loop runs, only notes
a signal, acting on it at the next signal that reaches the running loop. A SIGTERM or
SIGQUIT that came while the worker imported the app was therefore lost, and the worker
served until gunicorn's graceful timeout killed it. Here gunicorn's plain handlers stand
until the loop runs, then the loop's take over, and a worker told to stop before that
exits without starting the app.

Second, a failed start (the database cannot be opened, ...). Left to gunicorn, every
worker logs a traceback, and a second worker's exit is reaped inside the master's
``halt()``, which raises there: another traceback. Here the first worker to fail says
why, in one ERROR line for a ``StartupError`` (through gunicorn's traceback for anything
unexpected), and exits with WORKER_BOOT_ERROR, on which the master halts. A worker failing
at the same moment stays quiet, and exits once the master has reaped the first.
``QuietHalt`` logs the master's own lines about that halt at INFO: the worker's line has
said what happened and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import weakref
from multiprocessing.sharedctypes import Synchronized
from typing import Any, ClassVar

from aiohttp.worker import GunicornUVLoopWebWorker
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as BaseWorker

from app.startup import StartupError

# gunicorn's exit status for "the worker failed to boot": the master halts on it.
WORKER_BOOT_ERROR: int = Arbiter.WORKER_BOOT_ERROR


class Worker(GunicornUVLoopWebWorker):
    """aiohttp's uvloop worker; the first worker that fails to start reports it, in one line."""

    # The pid of the first worker that failed to start, or 0: memory every worker shares,
    # made by the master before its first fork.
    _first_failed: ClassVar[Synchronized[int] | None] = None
    # The workers the master made, for ``close_heartbeat_files``.
    _made: ClassVar[weakref.WeakSet[Worker]] = weakref.WeakSet()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Worker._made.add(self)
        if Worker._first_failed is None:  # in the master: workers are made there, then forked
            Worker._first_failed = multiprocessing.Value("q", 0)

    @classmethod
    def close_heartbeat_files(cls) -> None:
        """Close every worker's heartbeat file; for the master as it exits.

        gunicorn drops a worker that failed to boot without closing the file (a
        ResourceWarning at exit).
        """
        for worker in list(cls._made):
            worker.tmp.close()

    def init_signals(self) -> None:
        """gunicorn's plain handlers, for the imports before the event loop runs.

        They set ``alive`` (SIGTERM) or call aiohttp's ``handle_quit`` (SIGQUIT, SIGINT),
        which act at once, where uvloop would only note the signal.
        """
        BaseWorker.init_signals(self)

    async def _run(self) -> None:
        # aiohttp's coroutine that builds, starts and serves the app (private, pinned by
        # tests/test_startup.py): a failed start is handled here, in the event loop.
        super().init_signals()  # the loop runs: its handlers from now on
        if not self.alive:  # told to stop while importing the app: nothing to close yet
            return
        try:
            await super()._run()
        except Exception as e:
            if self.booted:  # failed while serving: gunicorn's own handling
                raise
            first = self._first_to_fail()
            if first != os.getpid():
                await self._wait_for_halt(first)
                return
            if not isinstance(e, StartupError):
                raise  # unexpected: gunicorn logs the traceback and exits WORKER_BOOT_ERROR
            self.log.error("lockstep: %s", e)
            # Told to stop while starting: the master is stopping, and a boot error now
            # would be reaped inside gunicorn's own stop(), which raises there.
            self.exit_code = WORKER_BOOT_ERROR if self.alive else 0

    def _first_to_fail(self) -> int:
        """The pid of the first worker that failed to start: this one, unless another was."""
        shared = Worker._first_failed
        if shared is None:
            return os.getpid()
        with shared.get_lock():
            if not shared.value:
                shared.value = os.getpid()
            return int(shared.value)

    async def _wait_for_halt(self, first: int) -> None:
        """Exit quietly once the master has reaped the first failed worker, and so halts.

        Exiting sooner, this worker might be reaped first and replaced.
        """
        deadline = self.loop.time() + self.cfg.graceful_timeout
        # Polled: no event tells that another process was reaped.
        while self.alive and _exists(first) and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # The master never reaped it: let this exit halt the master instead.
        self.exit_code = WORKER_BOOT_ERROR if self.alive and _exists(first) else 0


def _exists(pid: int) -> bool:
    """Whether process ``pid`` exists, a zombie not yet reaped included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# gunicorn's master lines when a worker exits with WORKER_BOOT_ERROR (gunicorn 23-27).
_BOOT_EXIT = "Worker (pid:%s) exited with code %s."
_SHUTTING_DOWN = "Shutting down: %s"
_REASON = "Reason: %s"
_BOOT_FAILED = "Worker failed to boot."


class QuietHalt(logging.Filter):
    """Log gunicorn's master lines about a halt for a worker's failed start at INFO.

    The worker has logged the cause (its ``StartupError`` line or a traceback) at ERROR;
    the master's "exited with code 3", "Shutting down" and "Reason: Worker failed to
    boot." add nothing to fix. Installed on ``gunicorn.error`` by ``app.logs``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._halting = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == _BOOT_EXIT and args[1:] == (WORKER_BOOT_ERROR,):
            self._halting = True
        elif not (
            (record.msg == _SHUTTING_DOWN and self._halting)
            or (record.msg == _REASON and args == (_BOOT_FAILED,))
        ):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)
