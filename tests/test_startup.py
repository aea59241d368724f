"""A service that cannot start says why in one line and exits non-zero; a clean stop is quiet.

The slow cases run real gunicorn with config/gunicorn.conf.py, as ``make run`` starts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.startup import StartupError, check_data_dir
from app.worker import QuietHalt
from tests.conftest import postgres_server_url, settings_for
from tests.support import CONFIG, Service, free_port, wait_for

# "<time> <LEVEL> [<pid>] <logger> " in front of a text log line.
_LOG_PREFIX = re.compile(r"^\S+ [A-Z]+ \[\d+\] \S+ ")


def assert_fails_with(service: Service, expected: str) -> None:
    """gunicorn exits non-zero and, besides its info lines, prints exactly ``expected``."""
    status = service.run_to_failure()
    log = service.log()
    assert status != 0, log
    assert "Traceback" not in log and "Task was destroyed" not in log, log
    problems = [_LOG_PREFIX.sub("", line) for line in log.splitlines() if " INFO " not in line]
    assert problems == [expected], log


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("LOCKSTEP_LOG_FORMAT", "yaml", "input should be 'text' or 'json'"),
        ("LOCKSTEP_SYNCHRONOUS", "bogus", "input should be 'FULL' or 'NORMAL'"),
        ("WEB_CONCURRENCY", "0", "should be a whole number of worker processes, 1 or more"),
    ],
)
def test_start_with_invalid_setting_names_variable_value_and_allowed(
    tmp_path: Path, variable: str, value: str, allowed: str
) -> None:
    """An invalid LOCKSTEP_ value stops gunicorn with one line: variable, value, what is allowed."""
    service = Service(tmp_path / "data", env={variable: value})
    assert_fails_with(service, f"lockstep: invalid setting {variable}={value}: {allowed}")


@pytest.fixture
def locked_data_dir() -> Iterator[Path]:
    """An existing data directory the service's user cannot write (readable by everyone)."""
    parent = Path(tempfile.mkdtemp(prefix="lockstep-locked-"))
    parent.chmod(0o755)
    data = parent / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o555)
    yield data
    data.chmod(0o755)
    shutil.rmtree(parent)


@pytest.mark.slow
def test_start_with_unwritable_data_dir_names_path_and_user(locked_data_dir: Path) -> None:
    """A data directory the workers' user cannot write stops the master before any worker."""
    if os.geteuid() == 0:
        # root writes anywhere: run the workers as nobody, as gunicorn's --user does.
        nobody = pwd.getpwnam("nobody")
        args = ["--user", str(nobody.pw_uid), "--group", str(nobody.pw_gid)]
        user = "nobody"
    else:
        args, user = [], pwd.getpwuid(os.geteuid()).pw_name
    service = Service(locked_data_dir, args=args)
    assert_fails_with(
        service,
        f"lockstep: cannot write to the data directory {locked_data_dir} as user {user}:"
        f" Permission denied; make it writable by {user} (e.g. chown {user} {locked_data_dir})"
        f" or set LOCKSTEP_DATA_DIR to a directory {user} can write",
    )
    assert "Booting worker" not in service.log()


@pytest.mark.slow
def test_start_on_address_in_use_names_address_and_setting(tmp_path: Path) -> None:
    """A busy listen address stops gunicorn at once with one line, not five retries' errors."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        service = Service(tmp_path / "data", port=port)
        assert_fails_with(
            service,
            f"lockstep: cannot listen on 127.0.0.1:{port}: another process is listening there"
            " (is lockstep already running?); stop it or set LOCKSTEP_BIND to a free HOST:PORT",
        )
        assert "Listening at" not in service.log()


@pytest.mark.slow
def test_start_with_file_that_is_not_a_database_names_file_and_fix(tmp_path: Path) -> None:
    """A lockstep.db that is not SQLite stops gunicorn with one line from one worker."""
    data = tmp_path / "data"
    data.mkdir()
    database = data / "lockstep.db"
    database.write_bytes(b"not a database, " * 512)
    service = Service(data)
    assert_fails_with(
        service,
        f"lockstep: {database} is not a SQLite database; restore it from a backup"
        " or move it away to start empty,"
        " or set LOCKSTEP_DATA_DIR to the directory of lockstep's database",
    )
    assert database.read_bytes() == b"not a database, " * 512


@pytest.mark.slow
def test_start_with_postgres_unreachable_names_server_and_fix(tmp_path: Path) -> None:
    """PostgreSQL still unreachable after LOCKSTEP_PG_STARTUP_TIMEOUT: one line, then exit."""
    port = free_port()  # nothing listens there: every connection attempt is refused
    service = Service(
        tmp_path / "data",
        env={
            "LOCKSTEP_DATABASE_URL": f"postgresql://lockstep:secret@127.0.0.1:{port}/lockstep",
            "LOCKSTEP_PG_STARTUP_TIMEOUT": "1",
        },
    )
    assert_fails_with(
        service,
        f"lockstep: cannot reach PostgreSQL at 127.0.0.1:{port} in 1 s (Connection refused);"
        " start it, or correct LOCKSTEP_DATABASE_URL"
        " (LOCKSTEP_PG_STARTUP_TIMEOUT sets how long to wait)",
    )
    assert "secret" not in service.log()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("part", "replacement", "said"),
    [
        ("password", "not-the-password", 'password authentication failed for user "lockstep"'),
        ("database", "no_such_database", 'database "no_such_database" does not exist'),
    ],
)
def test_start_refused_by_postgres_names_the_url_part_to_fix(
    tmp_path: Path, part: str, replacement: str, said: str
) -> None:
    """A server that answers "no" (wrong password, no such database) fails the start at once,
    in one line, instead of a traceback; the password never reaches the log."""
    parts = urlsplit(postgres_server_url())
    netloc = f"{parts.username}:{replacement}@{parts.hostname}:{parts.port}"
    if part == "password":
        url = urlunsplit(parts._replace(netloc=netloc))
    else:
        url = urlunsplit(parts._replace(path="/" + replacement))
    service = Service(tmp_path / "data", env={"LOCKSTEP_DATABASE_URL": url})
    assert_fails_with(
        service,
        f"lockstep: PostgreSQL at {parts.hostname}:{parts.port} refused lockstep's connection"
        f" ({said}); correct the user, password or database name in LOCKSTEP_DATABASE_URL",
    )
    assert "not-the-password" not in service.log()


@pytest.mark.slow
def test_sigterm_after_serving_logs_no_socket_error(tmp_path: Path) -> None:
    """A clean SIGTERM exits 0 without "Error while closing socket ... Bad file descriptor"."""
    with Service(tmp_path / "data", workers=1) as service:
        with urllib.request.urlopen(service.url + "/access", timeout=5) as r:
            assert r.status == 200
        assert service.stop() == 0
    log = service.log()
    assert "Worker exiting" in log
    assert "Bad file descriptor" not in log and "Error while closing socket" not in log, log
    assert "Traceback" not in log, log


# config/gunicorn.conf.py, plus a hold: the first worker waits, its signal handlers set and
# its event loop not yet running, until the test opens the FIFO it claimed.
_HOLDING_CONFIG = """
with open({real!r}) as real:
    exec(compile(real.read(), {real!r}, "exec"))
_lockstep_post_worker_init = post_worker_init

def post_worker_init(worker):
    _lockstep_post_worker_init(worker)
    import os
    try:
        os.rename({hold!r}, {held!r})
    except FileNotFoundError:
        return
    with open({held!r}, "rb"):
        pass
"""


def _status(pid: int, field: str) -> str:
    """A field of process ``pid``'s /proc status: ``State`` ("T (stopped)", ...), ``ShdPnd``."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s*(.*)$", status, re.M)
    assert found is not None, status
    return found[1]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
async def test_stop_while_a_worker_boots_exits_at_once(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM or SIGQUIT to gunicorn reaching a worker before its event loop runs (while it
    imports the app) stops that worker at once, not at gunicorn's 20 s graceful timeout."""
    hold, held = tmp_path / "hold", tmp_path / "held"
    os.mkfifo(hold)
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(_HOLDING_CONFIG.format(real=str(CONFIG), hold=str(hold), held=str(held)))
    service = Service(tmp_path / "data", workers=1, args=["--config", str(config)])
    service.spawn()
    assert service.proc is not None
    try:
        await wait_for(held.exists)
        [worker] = service.worker_pids()
        # Stopped, the worker keeps the master's signal pending where the test can see it
        # arrive; continued, it takes the signal while still held, before its loop runs.
        os.kill(worker, signal.SIGSTOP)
        await wait_for(lambda: _status(worker, "State").startswith("T"))
        service.proc.send_signal(sig)
        await wait_for(lambda: bool(int(_status(worker, "ShdPnd"), 16) & (1 << (sig - 1))))
        os.kill(worker, signal.SIGCONT)
        os.close(os.open(held, os.O_WRONLY))  # let it go on
        try:
            status = await asyncio.to_thread(service.proc.wait, 5)
        except subprocess.TimeoutExpired:
            pytest.fail("gunicorn still running 5 s after its booting worker was signalled")
    finally:
        if service.proc.poll() is None:
            service.kill_all()  # its worker too, even one still stopped or held
    assert status == 0, service.log()
    assert "Traceback" not in service.log()


def _as_nobody() -> tuple[int, int, str]:
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid, "nobody"


def test_check_data_dir_refuses_database_file_the_user_cannot_write(
    locked_data_dir: Path,
) -> None:
    """A writable directory holding a database file the workers' user cannot write is refused."""
    data = locked_data_dir
    data.chmod(0o777)
    database = data / "lockstep.db"
    database.write_bytes(b"")
    database.chmod(0o444)
    if os.geteuid() == 0:
        uid, gid, user = _as_nobody()

        def become() -> None:
            os.setgid(gid)
            os.setuid(uid)

        with pytest.raises(StartupError) as error:
            check_data_dir(settings_for(data.parent), uid, gid, become)
    else:
        user = pwd.getpwuid(os.geteuid()).pw_name
        with pytest.raises(StartupError) as error:
            check_data_dir(settings_for(data.parent), os.getuid(), os.getgid())
    assert str(error.value) == (
        f"cannot write the database file {database} as user {user}: Permission denied;"
        f" make it writable by {user} (e.g. chown {user} {database})"
    )
    assert sorted(p.name for p in data.iterdir()) == ["lockstep.db"]  # no probe file left


def test_check_data_dir_names_directory_it_cannot_create(tmp_path: Path) -> None:
    """A data directory that cannot be made (here: below a regular file) is named with the fix."""
    (tmp_path / "file").write_text("")
    settings = settings_for(tmp_path / "file")
    user = pwd.getpwuid(os.getuid()).pw_name
    with pytest.raises(StartupError) as error:
        check_data_dir(settings, os.getuid(), os.getgid())
    assert str(error.value) == (
        f"cannot create the data directory {tmp_path}/file/data as user {user}: Not a directory;"
        f" create it writable by {user} or set LOCKSTEP_DATA_DIR to a directory {user} can write"
    )


def _level_after_quiet_halt(quiet: QuietHalt, msg: str, *args: object) -> str:
    """The level ``quiet`` gives a gunicorn.error ERROR record, or "dropped"."""
    record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, msg, args, None)
    return record.levelname if quiet.filter(record) else "dropped"


@pytest.fixture
def gunicorn_error_at_info() -> Iterator[logging.Logger]:
    """gunicorn's error logger at the default log level (info), as gunicorn sets it."""
    logger = logging.getLogger("gunicorn.error")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(level)


def test_quiet_halt_lowers_only_the_masters_lines_about_a_failed_boot(
    gunicorn_error_at_info: logging.Logger,
) -> None:
    """The master's three lines about a boot failure become INFO; its other errors stay ERROR."""
    quiet = QuietHalt()
    assert _level_after_quiet_halt(quiet, "Shutting down: %s", "Master") == "ERROR"
    assert _level_after_quiet_halt(quiet, "Worker (pid:%s) exited with code %s.", 7, 1) == "ERROR"
    assert _level_after_quiet_halt(quiet, "Reason: %s", "App failed to load.") == "ERROR"
    assert _level_after_quiet_halt(quiet, "Worker (pid:%s) exited with code %s.", 7, 3) == "INFO"
    assert _level_after_quiet_halt(quiet, "Shutting down: %s", "Master") == "INFO"
    assert _level_after_quiet_halt(quiet, "Reason: %s", "Worker failed to boot.") == "INFO"
    assert _level_after_quiet_halt(quiet, "lockstep: %s", "cannot reach PostgreSQL") == "ERROR"
    gunicorn_error_at_info.setLevel(logging.WARNING)  # LOCKSTEP_LOG_LEVEL=warning: dropped
    assert _level_after_quiet_halt(quiet, "Reason: %s", "Worker failed to boot.") == "dropped"
