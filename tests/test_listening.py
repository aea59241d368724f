"""Each worker listens on a socket of its own (``LOCKSTEP_REUSE_PORT``), so the kernel spreads
new connections evenly; a second instance on the same port is still refused in one line.

With one shared socket, the worker that wakes first may accept a whole burst of
keep-alive connections and keep them (docs/design.md).
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from tests.support import Service
from tests.test_startup import assert_fails_with


def listening_sockets(port: int) -> set[str]:
    """``socket:[inode]`` of every socket in LISTEN state on local port ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rpartition(":")[2], 16) == port:
            found.add(f"socket:[{inode}]")
    return found


def held_by(pid: int) -> set[str]:
    """What the open descriptors of process ``pid`` point at."""
    fds = Path(f"/proc/{pid}/fd")
    return {os.readlink(fd) for fd in fds.iterdir()}


def access(service: Service) -> str:
    with urllib.request.urlopen(f"{service.url}/access", timeout=10) as response:
        return str(response.read().decode())


@pytest.mark.slow
def test_each_worker_listens_on_a_socket_of_its_own(tmp_path: Path) -> None:
    with Service(tmp_path / "data") as service:
        listening = listening_sockets(service.port)
        assert service.proc is not None
        per_worker = [held_by(pid) & listening for pid in service.worker_pids()]
        assert len(listening) == 2, listening
        assert [len(held) for held in per_worker] == [1, 1]
        assert per_worker[0] != per_worker[1]
        assert not held_by(service.proc.pid) & listening  # the master holds none
        log = service.log()
        assert f"Listening at: http://127.0.0.1:{service.port}, a socket per worker" in log
        assert "Listening at:  (" not in log  # gunicorn's own line, naming no socket, is dropped
        assert access(service) == "Resource accessed 1 times."


@pytest.mark.slow
def test_reuse_port_off_shares_one_socket(tmp_path: Path) -> None:
    with Service(tmp_path / "data", env={"LOCKSTEP_REUSE_PORT": "false"}) as service:
        [socket] = listening_sockets(service.port)
        assert service.proc is not None
        for pid in [service.proc.pid, *service.worker_pids()]:
            assert socket in held_by(pid)
        assert f"Listening at: http://127.0.0.1:{service.port} (" in service.log()


@pytest.mark.slow
def test_second_instance_on_the_port_is_refused_in_one_line(tmp_path: Path) -> None:
    """Its workers could bind beside the first's: the check before starting refuses it."""
    with Service(tmp_path / "first") as first:
        second = Service(tmp_path / "second", port=first.port)
        assert_fails_with(
            second,
            f"lockstep: cannot listen on 127.0.0.1:{first.port}: another process is listening"
            " there (is lockstep already running?); stop it or set LOCKSTEP_BIND to a free"
            " HOST:PORT",
        )
        assert len(listening_sockets(first.port)) == 2
        assert access(first) == "Resource accessed 1 times."
