"""The apps ``make bench`` compares, each started under the same gunicorn settings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CONFIG = ROOT / "config" / "gunicorn.conf.py"


@dataclass(frozen=True)
class Variant:
    """One row of the report: an app under ``config/gunicorn.conf.py`` and its environment.

    ``store`` names the database server it needs (``bench.stores``), whose URL it gets in
    ``BENCH_<STORE>_URL``; ``counts``: it serves the counters API the exactly-once check reads.
    """

    name: str
    title: str
    app: str | None = None  # None: lockstep itself
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/readyz"
    counts: bool = True
    store: str = ""
    root: Path = ROOT  # the checkout whose gunicorn, config and code run (``--baseline``)


LOCKSTEP, HELLO, QUIET, FLOOR = "lockstep", "hello", "quiet", "floor"
BASELINE = "baseline"  # another checkout of lockstep, as its ``make run`` starts it
REDIS_ALWAYS, REDIS_EVERYSEC, POSTGRES = "redis-always", "redis-everysec", "postgres"
# In the order each round runs them.
VARIANTS = {
    v.name: v
    for v in (
        Variant(LOCKSTEP, "lockstep as `make run` starts it", env={"LOCKSTEP_LOG_LEVEL": "info"}),
        Variant(
            HELLO, "aiohttp hello world", "bench.hello:create_app", ready_path="/", counts=False
        ),
        Variant(QUIET, "lockstep, access lines off", env={"LOCKSTEP_LOG_LEVEL": "warning"}),
        Variant(FLOOR, "durable floor (`bench/floor.py`)", "bench.floor:create_app"),
        Variant(
            REDIS_ALWAYS,
            "aiohttp + Redis `INCR`, `appendfsync always`",
            "bench.redis_peer:create_app",
            store="redis-always",
        ),
        Variant(
            REDIS_EVERYSEC,
            "aiohttp + Redis `INCR`, `appendfsync everysec`",
            "bench.redis_peer:create_app",
            store="redis-everysec",
        ),
        Variant(
            POSTGRES,
            "aiohttp + PostgreSQL `UPDATE … RETURNING` (asyncpg)",
            "bench.postgres_peer:create_app",
            store="postgres",
        ),
    )
}


def _established_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of every established TCP connection whose local port is ``port``."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "01" and int(local.rpartition(":")[2], 16) == port:  # ESTABLISHED
                    found.add(f"socket:[{inode}]")
    return found


def process_cpu_seconds(pids: list[str]) -> float | None:
    """CPU time (user + system) the processes have used so far; None off Linux."""
    if not Path("/proc/self/stat").exists():
        return None
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """gunicorn with ``config/gunicorn.conf.py`` exactly as ``make run`` starts it.

    Only the bind address (a free port), the data directory, ``env`` and, for every app but
    lockstep, the app module differ; ``extra_args`` (e.g. ``--worker-class``) go to every
    app alike. stdout and stderr (the access lines among them) go to a file.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        app: str | None = None,
        extra_args: list[str] | None = None,
        ready_path: str = "/readyz",
        env: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> None:
        self.name = name
        self.root = root
        self.workdir = workdir
        self.app = app
        self.extra_args = extra_args or []
        self.ready_path = ready_path
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Server:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start gunicorn without waiting for it (``wait_ready`` does), so several boot at once."""
        env = {**os.environ, "LOCKSTEP_DATA_DIR": str(self.workdir / f"{self.name}-data")}
        env.update(self.env)
        env.setdefault("WEB_CONCURRENCY", "2")
        env.pop("GUNICORN_CMD_ARGS", None)
        config = self.root / CONFIG.relative_to(ROOT)
        gunicorn = GUNICORN if self.root == ROOT else str(self.root / ".venv" / "bin" / "gunicorn")
        args = [gunicorn, "--config", str(config), "--bind", f"127.0.0.1:{self.port}"]
        args += self.extra_args
        if self.app is not None:
            args.append(self.app)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=log, stderr=log)

    def wait_ready(self, timeout: float = 30) -> Server:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} not ready in {timeout} s:\n{self.log()}")

    def _workers(self) -> list[str] | None:
        """The worker processes' pids; None off Linux."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return children.read_text().split() if children.exists() else None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the workers have used so far; None off Linux."""
        workers = self._workers()
        return None if workers is None else process_cpu_seconds(workers)

    def connections_per_worker(self) -> list[int] | None:
        """How many client connections each worker holds open now, largest first.

        The kernel deals connections out to the workers' sockets by hash, so the split
        varies a little run by run; lockstep's batches (and its req/s) follow it. None off
        Linux.
        """
        workers = self._workers()
        if workers is None:
            return None
        ours = _established_inodes(self.port)
        counts = []
        for pid in workers:
            held = 0
            with contextlib.suppress(FileNotFoundError, PermissionError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(fd.path) in ours:
                            held += 1
            counts.append(held)
        return sorted(counts, reverse=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    @staticmethod
    def stop_all(servers: list[Server]) -> None:
        """Stop several at once: each takes a second or two to shut down gracefully."""
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in servers:
            server.stop()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def add_baseline(root: Path) -> None:
    """Add another checkout of lockstep (its own ``.venv``, made by its ``make run``) as a row."""
    commit = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h %cs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    VARIANTS[BASELINE] = Variant(BASELINE, f"lockstep at {commit}, as its `make run` starts it",
                                 root=root.resolve())  # fmt: skip
