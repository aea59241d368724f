"""The Docker files, tested without a Docker engine: they agree, lint clean, and the CMD serves.

No Docker engine runs on our machines. These tests read the Dockerfile and the compose
files, check that they describe the same service (port, volume, command, healthcheck,
tokens recipe), run hadolint on the Dockerfile, and run the Dockerfile's own CMD here with
the image's environment, a temp data dir and a free loopback port.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from app.cli import _parser
from tests.dockerfile import (
    DOCKERFILE,
    exec_form,
    healthcheck_command,
    image_env,
    only,
    parse_dockerfile,
)
from tests.support import ROOT, free_port

COMPOSE = ROOT / "docker-compose.yml"
TOKENS_COMPOSE = ROOT / "docker-compose.tokens.yml"
BIN = Path(sys.executable).parent


def compose_file(path: Path = COMPOSE) -> dict[str, Any]:
    """A compose file with ``${VAR:-default}`` resolved as compose would with VAR unset."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", path.read_text())
    compose: dict[str, Any] = yaml.safe_load(text)
    return compose


def compose_service() -> dict[str, Any]:
    """The single service docker-compose.yml defines without a profile."""
    services = {n: s for n, s in compose_file()["services"].items() if not s.get("profiles")}
    assert list(services) == ["lockstep"]
    service: dict[str, Any] = services["lockstep"]
    return service


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/").removeprefix("**/")
        # A pattern matching a directory covers everything under it.
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.split("/")[-1], pattern)
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def documented_commands(text: str, program: str) -> list[list[str]]:
    """The words of every line of ``text`` that runs ``program`` (in a code block, or a
    comment line such as ``#   lockstep …``), with ``sudo`` and trailing comments dropped."""
    pattern = rf"^[#\s]*(?:sudo )?((?:\S*/)?{re.escape(program)} .*)$"
    return [shlex.split(line, comments=True) for line in re.findall(pattern, text, re.M)]


def url_port(command: list[str]) -> int:
    """The port of the http://127.0.0.1:PORT URL inside a healthcheck command."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)/readyz", " ".join(command))
    assert match, command
    return int(match.group(1))


# --- the files agree ----------------------------------------------------------------


def test_dockerfile_and_compose_agree_on_port() -> None:
    """EXPOSE, the bind address, both healthchecks and compose's port mapping name one port."""
    dockerfile = parse_dockerfile()
    env = image_env(dockerfile)
    host, _, bind_port = env["LOCKSTEP_BIND"].rpartition(":")
    assert host == "0.0.0.0"
    port = int(bind_port)
    assert port == 8080
    assert only(dockerfile, "EXPOSE") == str(port)
    assert url_port(healthcheck_command(dockerfile)) == port
    service = compose_service()
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert url_port(service["healthcheck"]["test"]) == port


def test_dockerfile_and_compose_agree_on_data_volume() -> None:
    """The image's VOLUME, its LOCKSTEP_DATA_DIR and compose's named volume are all /data."""
    dockerfile = parse_dockerfile()
    assert exec_form(only(dockerfile, "VOLUME")) == ["/data"]
    assert image_env(dockerfile)["LOCKSTEP_DATA_DIR"] == "/data"
    service = compose_service()
    assert service["environment"].get("LOCKSTEP_DATA_DIR", "/data") == "/data"
    [mount] = service["volumes"]
    volume, _, target = mount.partition(":")
    assert target == "/data"
    assert volume in compose_file()["volumes"], "the data volume must be a named volume"


def test_dockerfile_cmd_runs_gunicorn_with_the_config() -> None:
    """CMD is exec-form gunicorn with config/gunicorn.conf.py, which the image copies."""
    dockerfile = parse_dockerfile()
    command = exec_form(only(dockerfile, "CMD"))
    assert command[0] == "gunicorn"
    config = command[command.index("--config") + 1]
    assert (ROOT / config).is_file()
    # No hard-coded --bind/--workers: GUNICORN_CMD_ARGS and WEB_CONCURRENCY must still work.
    assert not {"--bind", "-b", "--workers", "-w"} & set(command)
    copied = [shlex.split(i.args)[:-1] for i in dockerfile if i.keyword == "COPY"]
    assert any(
        config == src or config.startswith(src.rstrip("/") + "/") for srcs in copied for src in srcs
    )
    assert "command" not in compose_service() or compose_service()["command"] == command


def test_dockerfile_copies_only_what_exists_and_is_in_context() -> None:
    """Every COPY source exists and .dockerignore lets it into the build context."""
    sources = [
        s for i in parse_dockerfile() if i.keyword == "COPY" for s in shlex.split(i.args)[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source.rstrip("/")), source
    for junk in (".venv", "data", ".git", "tests"):
        assert dockerignored(junk), junk


def test_dockerfile_installs_dependencies_before_copying_source() -> None:
    """pyproject.toml alone is copied and installed before app/, so source edits keep the cache."""
    keywords = [(i.keyword, i.args) for i in parse_dockerfile()]
    first_copy = next(n for n, (k, _) in enumerate(keywords) if k == "COPY")
    app_copy = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and a.startswith("app"))
    assert keywords[first_copy][1].split()[0] == "pyproject.toml"
    installs = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and "pip install" in a]
    assert installs and first_copy < installs[0] < app_copy


def test_dockerfile_runs_unprivileged_with_healthcheck() -> None:
    """The image runs as a non-root user, unbuffered, with the same healthcheck as compose."""
    dockerfile = parse_dockerfile()
    user = only(dockerfile, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert image_env(dockerfile)["PYTHONUNBUFFERED"] == "1"
    assert dockerfile[0].keyword == "FROM"
    assert re.fullmatch(r"python:3\.11-slim\S*", dockerfile[0].args)
    service = compose_service()
    assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command(dockerfile)]


def test_compose_restarts_and_stops_gracefully() -> None:
    """compose restarts the service and gives it longer to stop than gunicorn's graceful_timeout."""
    service = compose_service()
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace
    config = (ROOT / "config" / "gunicorn.conf.py").read_text()
    graceful = re.search(r"^graceful_timeout = (\d+)", config, re.M)
    assert graceful
    assert int(grace.group(1)) > int(graceful.group(1))


def compose_token_commands(text: str) -> list[list[str]]:
    """The ``lockstep token`` words of every ``docker compose run|exec … lockstep token``
    line of ``text``."""
    commands = documented_commands(text, "docker compose")
    return [w[w.index("token") - 1 :] for w in commands if "token" in w]


def test_compose_publishes_only_on_loopback_by_default() -> None:
    """Every published port binds 127.0.0.1 unless told otherwise: without a tokens file the
    API is open; LOCKSTEP_PUBLISH, which the README names, widens the service's."""
    compose = compose_file()
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published
    assert all(p.startswith("127.0.0.1:") for p in published), published
    [mapping] = yaml.safe_load(COMPOSE.read_text())["services"]["lockstep"]["ports"]
    assert mapping.startswith("${LOCKSTEP_PUBLISH:-")
    readme = (ROOT / "README.md").read_text()
    assert "LOCKSTEP_PUBLISH=" in readme and "Compose v2" in readme


def test_compose_services_that_build_have_their_own_image_tags() -> None:
    """Services with different roles never build into one tag (each build would replace the
    other's image)."""
    services = compose_file()["services"].values()
    tags = [s.get("image") for s in services if "build" in s]
    assert len(tags) >= 2
    assert len(set(tags)) == len(tags), tags


def test_compose_token_recipe_runs_the_cli_in_the_image_on_a_writable_mount() -> None:
    """Every documented `lockstep token` command, in the compose tokens recipe and the README,
    is one the CLI accepts; the recipe's run inside the service, whose mount of the tokens
    directory is writable and handed to the image's user."""
    recipe = TOKENS_COMPOSE.read_text()
    readme = (ROOT / "README.md").read_text()
    in_compose = compose_token_commands(recipe)
    assert {c[2] for c in in_compose} == {"new", "list", "revoke"}
    for words in in_compose + documented_commands(readme, "lockstep token"):
        try:
            _parser().parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"the CLI refuses the documented command: {shlex.join(words)}")
    assert compose_token_commands(readme) == in_compose

    service = yaml.safe_load(recipe)["services"]["lockstep"]
    [mount] = service["volumes"]
    assert not mount.endswith(":ro"), "the CLI writes the tokens file there"
    source, target = mount.split(":")
    tokens_file = PurePosixPath(service["environment"]["LOCKSTEP_TOKENS_FILE"])
    assert tokens_file.parent == PurePosixPath(target)
    # The CLI runs as the Dockerfile's USER, so that user must own the directory.
    chown = re.findall(r"\bchown (\S+) (\S+)$", recipe, re.M)
    assert chown == [(only(parse_dockerfile(), "USER"), source.removeprefix("./"))]


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing at all for the Dockerfile, not even style notes."""
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


# --- the CMD serves -----------------------------------------------------------------


@pytest.fixture
def container_like(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The Dockerfile's CMD run here with the image's ENV, a temp /data and a free port."""
    dockerfile = parse_dockerfile()
    port = free_port()
    env = {
        **os.environ,
        **image_env(dockerfile),
        "LOCKSTEP_DATA_DIR": str(tmp_path / "data"),
        "LOCKSTEP_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
    }
    env.pop("GUNICORN_CMD_ARGS", None)
    command = exec_form(only(dockerfile, "CMD"))
    command[0] = str(BIN / command[0])  # the venv's gunicorn, as the image's is on PATH
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30) -> int:
    """Poll /readyz until it answers; returns its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                status: int = r.status
                return status
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    pytest.fail(f"not ready in {timeout} s:\n{log.read_text()}")


@pytest.mark.slow
def test_dockerfile_cmd_serves_readyz(
    container_like: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    """The Dockerfile's CMD with the image's environment serves /readyz 200 and creates the db."""
    proc, port, log = container_like
    assert wait_ready(proc, port, log) == 200
    assert (tmp_path / "data" / "lockstep.db").is_file()
    # The image's own HEALTHCHECK command passes against it (its port swapped likewise).
    check = healthcheck_command(parse_dockerfile())
    check = [c.replace(":8080/", f":{port}/") for c in check]
    check[0] = sys.executable
    assert subprocess.run(check, timeout=30).returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/access", timeout=5) as r:
        assert r.status == 200
        assert r.read() == b"Resource accessed 1 times."
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
