"""What gunicorn's processes do with their sockets, read from /proc (Linux only): which worker
serves a client connection, whether it has read what the client sent, whether the port listens,
when a worker last checked in with the master."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _tcp_sockets() -> list[list[str]]:
    """Every TCP socket's row of /proc/net/tcp{,6}: addresses, state, queues, inode."""
    return [
        line.split()
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
    ]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _server_side(server_port: int, client_port: int) -> list[str] | None:
    for fields in _tcp_sockets():
        if _port(fields[1]) == server_port and _port(fields[2]) == client_port:
            return fields
    return None


def serving_worker(worker_pids: list[int], server_port: int, client_port: int) -> int | None:
    """The worker whose accepted socket is connected to ``client_port``, if any."""
    fields = _server_side(server_port, client_port)
    if fields is None:
        return None
    inode = fields[9]
    for pid in worker_pids:
        if inode in _socket_inodes(pid):
            return pid
    return None


def read_everything_sent(worker_pids: list[int], server_port: int, client_port: int) -> bool:
    """A worker has accepted the connection from ``client_port`` and read all it was sent."""
    fields = _server_side(server_port, client_port)
    if fields is None or serving_worker(worker_pids, server_port, client_port) is None:
        return False
    unread = int(fields[4].split(":")[1], 16)  # tx_queue:rx_queue, in bytes
    return unread == 0


def listening(port: int) -> bool:
    """Some process still listens on ``port`` (gunicorn's master and workers each hold it)."""
    return any(_port(f[1]) == port and f[3] == "0A" for f in _tcp_sockets())  # 0A: LISTEN


def last_heartbeat(pid: int) -> float:
    """When worker ``pid`` last told the master it is alive (its gunicorn tmp file's mtime).

    aiohttp's worker does so once a second, and only then notices a SIGTERM it received.
    """
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if "wgunicorn-" in os.readlink(fd):
                return fd.stat().st_mtime
    raise AssertionError(f"worker {pid} holds no gunicorn heartbeat file")
