"""The Dockerfile's image built and run with podman and buildah, without a Docker daemon.

``podman build --isolation chroot`` builds it and ``buildah run --isolation chroot`` runs
it: the OCI runtimes cannot set rlimits on our machines, and chroot isolation sets none.
A container run that way shares the host's network (the service listens on a loopback port
of ours) and process table (its processes and their uids are in our /proc).

No container registry is reachable from our machines. Where the Dockerfile's base image is
not stored already, a stand-in is made from Debian's packages with debootstrap: Debian 12,
whose python3 is 3.11 as in ``python:3.11-slim``, with pip and ``python``, this machine's CA
bundle and the pip settings that reach the package registry. podman keeps it under a tag
hashing all of that, so a machine pays for debootstrap once, until one of them changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.dockerfile import parse_dockerfile
from tests.support import ROOT

IMAGE = "localhost/lockstep-test:latest"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
MIRROR = "http://deb.debian.org/debian"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# pip settings that decide how the package registry is reached; local paths and file://
# indexes exist only on this machine, so they stay out of the stand-in.
REGISTRY_KEYS = ("index-url", "extra-index-url", "trusted-host", "proxy")
TOOLS = "apt-get install podman buildah debootstrap; scripts/system-deps.sh does it in CI"


def unavailable_reason() -> str | None:
    """Why the image cannot be built and run here, or None if it can."""
    missing = [tool for tool in ("podman", "buildah") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({TOOLS})"
    if os.geteuid() != 0:
        return "building and running the image with podman and buildah needs root"
    return None


def run(command: list[str], timeout: float = 120, stdin: IO[bytes] | None = None) -> str:
    """Run ``command`` and return its output; fail the test with that output if it fails."""
    result = subprocess.run(command, stdin=stdin, capture_output=True, timeout=timeout, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
        pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{output}")
    return result.stdout.decode()


def _pip_settings() -> tuple[str, Path]:
    """The stand-in's pip.conf, and the CA bundle pip trusts on this machine."""
    listed = run([sys.executable, "-m", "pip", "config", "list"])
    found: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        match = re.fullmatch(r"(:env:|global|install)\.([\w-]+)='(.*)'", line)
        if match:
            found.setdefault(match[2], {})[match[1]] = match[3]
    # The environment overrides the [install] section, which overrides [global].
    value = {key: v.get(":env:") or v.get("install") or v["global"] for key, v in found.items()}
    bundle = Path(value.get("cert") or ssl.get_default_verify_paths().cafile or SYSTEM_BUNDLE)
    lines = ["[global]", f"cert = {SYSTEM_BUNDLE}"]
    for key in REGISTRY_KEYS:
        remote = [v for v in value.get(key, "").split() if not v.startswith(("file:", "/"))]
        if remote:
            lines.append(f"{key} = {' '.join(remote)}")
    return "\n".join(lines) + "\n", bundle


def base_image() -> str | None:
    """The image to build from: None where the Dockerfile's own base is stored, else the
    stand-in, made now if this machine has none that matches."""
    base = parse_dockerfile()[0].args
    if subprocess.run(["podman", "image", "exists", base], check=False).returncode == 0:
        return None
    pip_conf, bundle = _pip_settings()
    recipe = [inspect.getsource(_make_standin), SUITE, *PACKAGES, MIRROR, pip_conf]
    key = hashlib.sha256("\n".join(recipe).encode() + bundle.read_bytes()).hexdigest()[:16]
    tag = f"localhost/lockstep-base:{key}"
    # One debootstrap at a time on a machine; a second caller then finds the tag.
    with open(Path(tempfile.gettempdir()) / "lockstep-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["podman", "image", "exists", tag], check=False).returncode != 0:
            _make_standin(tag, pip_conf, bundle)
    return tag


def _make_standin(tag: str, pip_conf: str, bundle: Path) -> None:
    """Debian 12 with python3, pip and ``python``, imported into podman as ``tag``."""
    if shutil.which("debootstrap") is None:
        pytest.fail(f"debootstrap not installed, needed for the stand-in base image ({TOOLS})")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp)
        include = ",".join(PACKAGES)
        run(
            ["debootstrap", "--variant=minbase", f"--include={include}", SUITE, tmp, MIRROR],
            timeout=900,
        )
        # As in python:3.11-slim, pip installs into the system's Python (PEP 668 off).
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        shutil.copyfile(bundle, root / SYSTEM_BUNDLE.lstrip("/"))
        (root / "etc/pip.conf").write_text(pip_conf)
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        shutil.rmtree(root / "var/lib/apt/lists")
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        changes = ["--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]']
        with subprocess.Popen(["tar", "-C", tmp, "-c", "."], stdout=subprocess.PIPE) as tar:
            run(["podman", "import", "--quiet", *changes, "-", tag], stdin=tar.stdout)
        assert tar.returncode == 0


def build_image() -> str:
    """Build the Dockerfile (on the stand-in base where needed); returns the image's name."""
    base = base_image()
    command = ["podman", "build", "--isolation", "chroot", "--format", "docker", "--layers"]
    command += ["--tag", IMAGE, *(["--from", base] if base else []), str(ROOT)]
    run(command, timeout=600)
    return IMAGE


def image_config(image: str) -> dict[str, Any]:
    """The image's configuration as podman stored it (Cmd, User, Env, Healthcheck, ...)."""
    [inspected] = json.loads(run(["podman", "image", "inspect", image]))
    config: dict[str, Any] = inspected["Config"]
    config["Healthcheck"] = inspected.get("Healthcheck")
    return config


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    name: str
    uid: int


def descendants(pid: int) -> list[Process]:
    """Every live process below ``pid``, with its name (comm) and real uid."""
    table: list[Process] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:  # exited meanwhile
            continue
        name, _, rest = stat.partition(" (")[2].rpartition(") ")
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
        assert uid
        table.append(Process(int(entry.name), int(rest.split()[1]), name, int(uid[1])))
    below: list[Process] = []
    parents = {pid}
    while found := [p for p in table if p.ppid in parents and p not in below]:
        below += found
        parents = {p.pid for p in found}
    return below


@dataclass
class Served:
    """The image's CMD running under ``buildah run``; its output goes to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def gunicorn(self) -> tuple[Process, list[Process]]:
        """The gunicorn master and its workers."""
        processes = [p for p in descendants(self.proc.pid) if p.name == "gunicorn"]
        pids = {p.pid for p in processes}
        masters = [p for p in processes if p.ppid not in pids]
        if len(masters) != 1:
            raise ValueError(f"expected one gunicorn master, found {masters}")
        [master] = masters
        return master, [p for p in processes if p.ppid == master.pid]

    def wait_ready(self, port: int, workers: int, timeout: float = 30) -> None:
        """Wait until /readyz answers 200 and every worker has the database open (its app
        started), so that the test's requests can reach every worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the service exited {self.proc.returncode}:\n{self.log.read_text()}")
            url = f"http://127.0.0.1:{port}/readyz"
            with (
                contextlib.suppress(urllib.error.URLError, OSError, ValueError),
                urllib.request.urlopen(url, timeout=1) as r,
            ):
                if r.status == 200 and self._databases_open() == workers:
                    return
            time.sleep(0.05)
        pytest.fail(f"not ready in {timeout} s:\n{self.log.read_text()}")

    def _databases_open(self) -> int:
        """How many workers have lockstep.db open; raises ValueError while the master is
        not up yet."""
        _, workers = self.gunicorn()
        count = 0
        for worker in workers:
            fds = Path(f"/proc/{worker.pid}/fd")
            with contextlib.suppress(OSError):
                count += any(os.readlink(fd).endswith("/lockstep.db") for fd in fds.iterdir())
        return count

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to gunicorn's master, as `docker stop` sends it; returns the exit status."""
        master, _ = self.gunicorn()
        os.kill(master.pid, signal.SIGTERM)
        return self.proc.wait(timeout)


class Container:
    """A buildah working container of an image, deleted on leaving the ``with`` block."""

    def __init__(self, image: str, log_dir: Path) -> None:
        self.image = image
        self.name = f"lockstep-test-{uuid.uuid4().hex[:12]}"
        self.log_dir = log_dir
        self.volumes: list[str] = []

    def __enter__(self) -> Container:
        run(["buildah", "from", "--pull-never", "--name", self.name, self.image])
        return self

    def __exit__(self, *exc_info: object) -> None:
        run(["buildah", "rm", self.name])

    def mount(self, source: Path, target: str, options: str = "") -> None:
        """Mount ``source`` on ``target`` in every later run, as a named volume would be;
        ``options`` as in compose (``ro``)."""
        # buildah would mount its own volume over ours where the image declares a VOLUME;
        # Docker lets an explicit mount take the VOLUME's place, so drop the declaration.
        run(["buildah", "config", f"--volume={target}-", self.name])
        self.volumes.append(f"--volume={source}:{target}" + (f":{options}" if options else ""))

    def new_volume(self, source: Path, target: str) -> None:
        """Mount ``source`` on ``target`` made into what a new named volume starts as: the
        image's directory there, with its owner and mode (it is empty in our image)."""
        rootfs = Path(run(["buildah", "mount", self.name]).strip())
        try:
            image_dir = rootfs / target.lstrip("/")
            assert not any(image_dir.iterdir()), f"{target} is not empty in the image"
            info = image_dir.stat()
        finally:
            run(["buildah", "umount", self.name])
        source.mkdir()
        os.chown(source, info.st_uid, info.st_gid)
        source.chmod(stat.S_IMODE(info.st_mode))
        self.mount(source, target)

    def _run_command(self, command: list[str], env: dict[str, str]) -> list[str]:
        options = [f"--env={k}={v}" for k, v in env.items()] + self.volumes
        return ["buildah", "run", "--isolation", "chroot", *options, self.name, "--", *command]

    def run(self, *command: str, env: dict[str, str] | None = None) -> str:
        """Run a command in the container as the image's user; returns its output."""
        return run(self._run_command(list(command), env or {}))

    @contextlib.contextmanager
    def serve(self, command: list[str], env: dict[str, str]) -> Iterator[Served]:
        """Run ``command`` (the image's CMD) until stopped; killed if still running at exit."""
        log = self.log_dir / f"{self.name}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self._run_command(command, env), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            yield Served(proc, log)
        finally:
            if proc.poll() is None:
                proc.terminate()  # buildah kills what runs inside
                proc.wait(30)
