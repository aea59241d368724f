"""Each worker listens on a socket of its own (``LOCKSTEP_REUSE_PORT``), so the kernel spreads
new connections evenly; a second instance on the same port is still refused in one line.

With one shared socket, the worker that wakes first may accept a whole burst of
keep-alive connections and keep them (docs/design.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support import Service, wait_for
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


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.slow
async def test_usr2_upgrade_starts_a_new_master_beside_the_old_one(tmp_path: Path) -> None:
    """gunicorn's binary upgrade: the new master's workers bind beside the old ones', and
    once the old master stops the new one serves alone (gunicorn itself cannot parse the
    empty socket list a master without sockets hands over)."""
    with Service(tmp_path / "data") as service:
        assert service.proc is not None
        old = service.proc.pid
        new = 0
        try:
            os.kill(old, signal.SIGUSR2)
            await wait_for(lambda: len(listening_sockets(service.port)) == 4, within=20)
            [new] = [pid for pid in children(old) if children(pid)]
            service.stop()  # the old master and its workers, as an upgrade ends
            await wait_for(lambda: len(listening_sockets(service.port)) == 2, within=20)
            assert {s for pid in children(new) for s in held_by(pid)} >= listening_sockets(
                service.port
            )
            assert access(service) == "Resource accessed 1 times."
            await wait_for(lambda: "Master has been promoted." in service.log(), within=20)
            assert "Traceback" not in service.log(), service.log()
        finally:
            if new and running(new):
                os.kill(new, signal.SIGQUIT)
                await wait_for(lambda: not running(new), within=30)
