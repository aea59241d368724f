"""The servers the peers of ``make bench`` use: Redis, PostgreSQL and etcd, on loopback.

Each is started from its Debian package's binaries (``redis-server``, ``postgresql``,
``etcd-server``) on a free port with its files in a temp directory, and stopped (its files
removed) afterwards.
PostgreSQL refuses to run as root; as root, its commands run as the ``postgres`` user the
Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from bench.servers import free_port, process_cpu_seconds


class StoreMissing(Exception):
    """The server's package is not installed: the message says which one to install."""


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"not listening after {timeout} s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Redis:
    """``redis-server`` with an append-only file synced ``always`` or ``everysec``."""

    def __init__(self, appendfsync: str) -> None:
        self.appendfsync = appendfsync
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StoreMissing("redis-server not found: apt-get install redis-server")
        self._dir = tempfile.TemporaryDirectory(prefix="lockstep-bench-redis-")
        log = Path(self._dir.name) / "redis.log"
        args = [
            *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self._dir.name),
            *("--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", ""),
            *("--daemonize", "no", "--logfile", str(log)),
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            _wait_for_port(self.port, self._proc, log, 15)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        _stop(self._proc)
        if self._dir is not None:
            self._dir.cleanup()


def _postgres_bin(name: str) -> str:
    """A PostgreSQL program from the newest Debian server package, or from PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name or 0)
    )
    for bin_dir in reversed(versions):
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    found = shutil.which(name)
    if found is None:
        raise StoreMissing(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return found


class Postgres:
    """A throwaway PostgreSQL cluster: ``fsync`` and ``synchronous_commit`` on, as shipped."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._dir = ""
        self._started = False

    def _run(self, *args: str) -> None:
        # As root, as the package's postgres user (initdb and postgres refuse to be root).
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def __enter__(self) -> Postgres:
        initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        self._dir = tempfile.mkdtemp(prefix="lockstep-bench-postgres-")
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        data = f"{self._dir}/data"
        try:
            # --no-sync only skips syncing the fresh cluster's files; commits fsync as usual.
            self._run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
            options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._dir}"
            self._run(pg_ctl, "-D", data, "-l", f"{self._dir}/log", "-o", options, "-w", "start")
            self._started = True
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._started:
            with contextlib.suppress(RuntimeError):
                self._run(_postgres_bin("pg_ctl"), "-D", f"{self._dir}/data", "-m", "fast", "stop")
            self._started = False
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


class Etcd:
    """A one-member etcd cluster (Debian ``etcd-server``), fsyncing its log as shipped.

    Clients reach it through its JSON gateway at ``url`` (``/v3/lease/grant``,
    ``/v3/lock/lock``, ...), the HTTP face of the gRPC API ``etcdctl lock`` uses.
    """

    def __init__(self) -> None:
        self.port, self._peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Etcd:
        binary = shutil.which("etcd")
        if binary is None:
            raise StoreMissing("etcd not found: apt-get install etcd-server")
        self._dir = tempfile.TemporaryDirectory(prefix="lockstep-bench-etcd-")
        log = Path(self._dir.name) / "etcd.log"
        peer = f"http://127.0.0.1:{self._peer_port}"
        args = [
            *(binary, "--name", "bench", "--data-dir", f"{self._dir.name}/data"),
            *("--listen-client-urls", self.url, "--advertise-client-urls", self.url),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"bench={peer}", "--logger", "zap", "--log-outputs", str(log)),
        ]
        # The gateway's gRPC client logs to stderr, the server itself to ``log``.
        with log.with_suffix(".stderr").open("wb") as stderr:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            _wait_for_port(self.port, self._proc, log, 15)
            self._wait_healthy(log, 15)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_healthy(self, log: Path, timeout: float) -> None:
        """Until the member has elected itself leader (``/health`` says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(self.url + "/health", timeout=1) as r,
            ):
                if b'"true"' in r.read():
                    return
            time.sleep(0.05)
        raise TimeoutError(
            f"etcd not healthy after {timeout} s:\n{log.read_text(errors='replace')}"
        )

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server has used so far; None off Linux."""
        assert self._proc is not None
        return process_cpu_seconds([str(self._proc.pid)])

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        _stop(self._proc)
        if self._dir is not None:
            self._dir.cleanup()
