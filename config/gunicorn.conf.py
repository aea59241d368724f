"""gunicorn settings for lockstep; ``GUNICORN_CMD_ARGS`` and ``WEB_CONCURRENCY`` still apply.

Command-line flags and ``GUNICORN_CMD_ARGS`` override anything set here, as gunicorn
documents; the worker count falls back to ``WEB_CONCURRENCY`` the way gunicorn's own
default does.
"""

import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.logs import logging_config
from app.settings import InvalidSettings, load_settings

# Read before anything else: a bad LOCKSTEP_LOG_FORMAT or LOCKSTEP_LOG_LEVEL would otherwise
# surface as gunicorn's "Unable to configure formatter", naming neither variable nor value.
try:
    lockstep_settings = load_settings()
except InvalidSettings as e:
    sys.exit(f"lockstep: {e}")

wsgi_app = "app.main:create_app"
# aiohttp's uvloop worker, reporting a failed start in one line (app.worker). uvloop: it
# cut lockstep's worker CPU per request by 5-25% and raised its req/s on every workload
# against the default asyncio loop (docs/design.md).
worker_class = "app.worker.Worker"
bind = [lockstep_settings.bind]


def _worker_count() -> int:
    """``WEB_CONCURRENCY``, 2 when unset; 0 stops here in one line (gunicorn would start a
    master that serves nothing). gunicorn refuses a negative count, and fails on one that is
    not a number in its own import, before this file runs.
    """
    given = os.environ.get("WEB_CONCURRENCY", "2")
    count = int(given)
    if count < 1:
        sys.exit(
            f"lockstep: invalid setting WEB_CONCURRENCY={shlex.quote(given)}:"
            " should be a whole number of worker processes, 1 or more"
        )
    return count


workers = _worker_count()
# In-flight requests get this long to finish after SIGTERM before workers are killed.
graceful_timeout = 20
timeout = 30
keepalive = 5
# The app writes one line per request itself (app/access_log.py: buffered, LOCKSTEP_ACCESS_LOG,
# LOCKSTEP_LOG_FORMAT=text|json) with its request id and lock wait, so gunicorn's stays off.
accesslog = None
errorlog = "-"
loglevel = lockstep_settings.log_level
logconfig_dict = logging_config(loglevel, lockstep_settings.log_format)
# gunicorn 27's runtime control socket is not used; without this, two instances on
# one machine would fight over the same socket path.
control_socket_disable = True


# Container objects made (net) before a young collection; CPython's default is 700.
YOUNG_GC_THRESHOLD = 10_000


def post_worker_init(worker: Any) -> None:
    """Keep a worker alive at the file-size limit, its shutdown quiet, its GC pauses short.

    The kernel signals SIGXFSZ at RLIMIT_FSIZE, whose default action kills the process;
    ignored, the write fails with EFBIG instead, SQLite reports an I/O error and the request
    answers 503. Python ignores it at startup already; this keeps it so whatever ran in
    between.

    ``gc.freeze()`` moves everything the worker has imported so far out of the collector's
    reach, so a full collection no longer walks it all; and the young generation's
    threshold goes from 700 to ``YOUNG_GC_THRESHOLD``, because the requests of one batch
    make more than 700 objects before their commit frees any, so nearly every batch set off
    a collection that found nothing. The figures are in docs/design.md. Every app of the
    benchmark runs under this file and gets both.
    """
    import gc
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # uvloop closes a listening socket's descriptor itself when the server stops, then calls
    # close() on the object it was given and ignores the EBADF it expects. gunicorn's socket
    # wrapper catches that EBADF first and logs "Error while closing socket [Errno 9] Bad
    # file descriptor" on every clean shutdown; the plain socket inside it (its ``sock``,
    # pinned by tests/test_startup.py) closes quietly.
    worker.sockets = [getattr(s, "sock", s) for s in worker.sockets]
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def _url(address: Any) -> str:
    """A bound address as gunicorn names it: http://HOST:PORT, or a Unix socket's path."""
    if not isinstance(address, tuple):
        return f"unix:{address}"
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def when_ready(server: Any) -> None:
    """Say where it listens when each worker has its own socket; warn on an open API.

    gunicorn's "Listening at:" line names the master's sockets, none with ``reuse_port``.
    """
    from app.auth import exposure_warning

    if server.cfg.reuse_port:
        server.log.info(
            "Listening at: %s, a socket per worker (%s)",
            ",".join(_url(address) for address in server.cfg.address),
            server.pid,
        )

    warning = exposure_warning(server.cfg.address, lockstep_settings)
    if warning:
        server.log.warning(warning)


# --- Prometheus multiprocess mode -------------------------------------------------------
# Workers write their metrics to files in this directory and a scrape of any worker adds
# them all up. prometheus_client picks the mode when it is first imported, so the variable
# is set here, while the configuration loads and before any worker (or --preload) imports
# the app. An operator-given PROMETHEUS_MULTIPROC_DIR is used and emptied at start; a
# directory made here is removed at exit.
# (The ownership mark survives a SIGHUP reload, which runs this file again.)
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lockstep-metrics-")
    os.environ["LOCKSTEP_OWNS_METRICS_DIR"] = "1"
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server: Any) -> None:
    """Refuse, in one line, to start a service that cannot work; then clear old metrics.

    Runs in the master before it binds or forks: the workers' user must be able to write
    the database, and the listen address must be free. Settings are read again because
    gunicorn's ``--env`` may have changed them since this file was loaded.
    """
    from gunicorn.util import set_owner_process

    from app.startup import StartupError, check_addresses, check_data_dir, sockets_per_worker

    cfg = server.cfg
    try:
        settings = load_settings()
        check_data_dir(
            settings,
            cfg.uid,
            cfg.gid,
            lambda: set_owner_process(cfg.uid, cfg.gid, initgroups=cfg.initgroups),
        )
        check_addresses(cfg.address, cfg.reuse_port)
        # After the check: gunicorn's own --reuse-port may mean to share the port with
        # another instance; lockstep's default never does.
        if settings.reuse_port and sockets_per_worker(cfg.address):
            cfg.set("reuse_port", True)
            if os.environ.get("GUNICORN_FD") == "":
                # Re-executed by USR2 from a master with no socket of its own: gunicorn
                # parses the list before it looks at reuse_port, and fails on an empty
                # one. Any number does: with reuse_port the list is not used.
                os.environ["GUNICORN_FD"] = "-1"
    except (InvalidSettings, StartupError) as e:
        server.log.error("lockstep: %s", e)
        if server.pidfile is not None:
            server.pidfile.unlink()
        on_exit(server)
        sys.exit(1)
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for leftover in _metrics_dir.glob("*.db"):
        leftover.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (locks held, open streams); its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration made; close what gunicorn left open."""
    from app.worker import Worker

    Worker.close_heartbeat_files()
    if os.environ.get("LOCKSTEP_OWNS_METRICS_DIR") == "1":
        shutil.rmtree(_metrics_dir, ignore_errors=True)
