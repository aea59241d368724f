"""What the gunicorn master checks once before it listens or forks a worker.

A service that cannot start should say so once, in one line naming the cause and the fix,
and exit. Left to the workers, an unwritable data directory is a traceback from every
worker and a second one from the master; left to gunicorn, an address in use is ten
error lines over five seconds of retries. ``config/gunicorn.conf.py`` runs these checks
in its ``on_starting`` hook and exits non-zero with the ``StartupError``'s line.
Storage raises ``StartupError`` too, for what only opening the database finds (a file
that is not a database, a server that stays unreachable); ``app.worker`` reports it.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from app.settings import Settings


class StartupError(Exception):
    """The service cannot start; ``str()`` is one line: the cause, then what to do."""


def check_data_dir(
    settings: Settings, uid: int, gid: int, as_worker: Callable[[], None] | None = None
) -> None:
    """Fail unless the workers' user (``uid``) can create the SQLite database and write it.

    ``as_worker`` switches a forked child to the workers' user and groups, as gunicorn
    does for a worker; it is used when the master runs as another user (``--user``).
    """
    if settings.uses_postgres:
        return
    database = settings.sqlite_path
    variable = "LOCKSTEP_DATABASE_URL" if settings.database_url else "LOCKSTEP_DATA_DIR"
    user = _user_name(uid)
    if as_worker is None or (uid, gid) == (os.getuid(), os.getgid()):
        problem = _write_problem(database, user, variable)
    else:
        problem = _in_child(as_worker, lambda: _write_problem(database, user, variable))
    if problem:
        raise StartupError(problem)


def _write_problem(database: Path, user: str, variable: str) -> str:
    """Why this process cannot create and write ``database`` and its journal, or ''."""
    directory = database.parent.absolute()
    existed = directory.is_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lockstep-write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if existed:
            cause = f"cannot write to the data directory {directory}"
            fix = f"make it writable by {user} (e.g. chown {user} {directory})"
        else:
            cause = f"cannot create the data directory {directory}"
            fix = f"create it writable by {user}"
        return (
            f"{cause} as user {user}: {e.strerror}; {fix}"
            f" or set {variable} to a directory {user} can write"
        )
    for path in (database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))):
        try:
            os.close(os.open(path, os.O_RDWR))
        except FileNotFoundError:
            continue
        except OSError as e:
            return (
                f"cannot write the database file {path.absolute()} as user {user}:"
                f" {e.strerror}; make it writable by {user} (e.g. chown {user} {path.absolute()})"
            )
    return ""


def _in_child(become: Callable[[], None], problem: Callable[[], str]) -> str:
    """``problem()`` run in a forked child after ``become()``; its answer comes back by pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer, then leave without running any of the parent's cleanup
        status = 0
        try:
            os.close(read_end)
            become()
            os.write(write_end, problem().encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        text = answer.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise StartupError("cannot check the data directory as the workers' user (--user)")
    return text


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry, as containers often run
        return f"uid {uid}"


def check_addresses(addresses: Sequence[object], reuse_port: bool = False) -> None:
    """Fail unless every TCP address gunicorn is about to bind is free, trying each once.

    gunicorn itself retries a busy address five times, a second apart, logging two errors
    each time. Sockets handed over by systemd or by a re-executing master (``LISTEN_FDS``,
    ``GUNICORN_FD``) are bound already; with ``reuse_port`` several may bind one address.
    """
    if reuse_port or "LISTEN_FDS" in os.environ or "GUNICORN_FD" in os.environ:
        return
    for address in addresses:
        if not isinstance(address, tuple):
            continue  # a Unix socket path (gunicorn replaces a stale one) or an inherited fd
        host, port = address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As gunicorn binds: SO_REUSEADDR, so only a listener, not TIME_WAIT, is in use.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise StartupError(_bind_problem(shown, e)) from None


def sockets_per_worker(addresses: Sequence[object]) -> bool:
    """Whether every worker can listen on each address with a socket of its own.

    Only for HOST:PORT with a fixed port, bound by gunicorn itself: a Unix socket path is
    one file, port 0 would give each worker a port of its own, and sockets handed over
    (``LISTEN_FDS``, ``GUNICORN_FD``) are already one per address. A master re-executed
    by ``USR2`` from one whose workers had sockets of their own inherits none (an empty
    ``GUNICORN_FD``): its workers bind theirs beside the old ones.
    """
    if "LISTEN_FDS" in os.environ or os.environ.get("GUNICORN_FD"):
        return False
    return all(isinstance(a, tuple) and a[1] != 0 for a in addresses)


def _bind_problem(address: str, error: OSError) -> str:
    fix = "set LOCKSTEP_BIND to a free HOST:PORT"
    if error.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {address}: another process is listening there"
            f" (is lockstep already running?); stop it or {fix}"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        fix = "set LOCKSTEP_BIND to an address of this machine (0.0.0.0:PORT for all)"
    elif error.errno == errno.EACCES:
        fix = "run as root for ports below 1024, or " + fix
    return f"cannot listen on {address}: {error.strerror or error}; {fix}"
