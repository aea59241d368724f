"""Run the real service (gunicorn with config/gunicorn.conf.py on a free port and a temp dir),
wait for a condition instead of sleeping, and talk to one worker over one connection."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CONFIG = ROOT / "config" / "gunicorn.conf.py"


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10, step: float = 0.005
) -> None:
    """Return as soon as ``condition()`` (plain or async) holds, checking every ``step`` s.

    Raises TimeoutError naming the condition if it still does not hold after ``within`` s.
    """
    deadline = asyncio.get_running_loop().time() + within
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still false after {within} s: {condition.__qualname__}")
        await asyncio.sleep(step)


def worker_of(request_id: str) -> str:
    """Which worker process answered, from the ``X-Request-ID`` it made up for the request.

    A fresh id starts with a random prefix drawn once per process (app.logs), so requests
    sent without an id of their own tell the workers apart.
    """
    return request_id[:12]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """gunicorn serving lockstep exactly as ``make run`` does, on its own port and data dir."""

    def __init__(
        self,
        data_dir: Path,
        workers: int = 2,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"gunicorn-{self.port}.log"

    def start(self, timeout: float = 30) -> Service:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def run_to_failure(self, timeout: float = 20) -> int:
        """Start gunicorn expecting it to refuse; returns its exit status once it has exited."""
        self.spawn()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gunicorn still running after {timeout} s:\n{self.log()}") from e

    def spawn(self) -> None:
        """Start gunicorn and return at once, without waiting for it to be ready."""
        env = {
            **os.environ,
            "LOCKSTEP_DATA_DIR": str(self.data_dir),
            "WEB_CONCURRENCY": str(self.workers),
            # Python ignores ResourceWarning by default: without this, a worker that leaks
            # a socket or file at shutdown prints nothing, and the log checks cannot fail.
            "PYTHONWARNINGS": "always::ResourceWarning",
            **self.extra_env,
        }
        env.pop("GUNICORN_CMD_ARGS", None)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                GUNICORN,
                "--config",
                str(CONFIG),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--access-logfile",
                "/dev/null",
                *self.args,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until all workers are forked and /readyz answers 200 (or fail with the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200 and self._workers_started():
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gunicorn not ready in {timeout} s:\n{self.log()}")

    def _workers_started(self) -> bool:
        """Every worker is forked and, on SQLite, has opened the database (its app started),
        so that the test's requests can reach every worker."""
        pids = self.worker_pids()
        if len(pids) < self.workers:
            return False
        if "LOCKSTEP_DATABASE_URL" in self.extra_env:
            return True
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
            except OSError:
                return False
            if not any(t.endswith("lockstep.db") for t in targets):
                return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """PIDs of the master's live worker processes."""
        assert self.proc is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the master and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def quit(self, timeout: float = 30) -> int:
        """Stop quickly, for a test done with the service: gunicorn's SIGQUIT.

        aiohttp's worker acts on SIGQUIT at once and then closes the app just as on SIGTERM,
        which it notices only at its next once-a-second check. Tests of the graceful stop
        itself send SIGTERM (``stop``).
        """
        return self.stop(signal.SIGQUIT, timeout)

    def kill_all(self) -> None:
        """kill -9 the master and every worker, as a crash would."""
        assert self.proc is not None
        pids = self.worker_pids()
        os.kill(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.quit()


class Connection:
    """One kept-alive HTTP/1.1 connection, so a test knows which worker serves its requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.worker = ""

    @classmethod
    async def open(cls, service: Service) -> Connection:
        conn = cls(*await asyncio.open_connection("127.0.0.1", service.port))
        _, headers, _ = await conn.request("GET", "/healthz")
        conn.worker = f"{service.port}/{worker_of(headers['x-request-id'])}"
        return conn

    async def request(
        self, method: str, path: str, body: bytes = b"", *extra: str
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{h}\r\n" for h in extra)
        self.writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
        }
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
