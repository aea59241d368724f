"""A service that cannot start says why in one line and exits non-zero; a clean stop is quiet.

The slow cases run real gunicorn with config/gunicorn.conf.py, as ``make run`` starts it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.startup import StartupError, check_data_dir
from tests.conftest import settings_for
from tests.support import Service

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
