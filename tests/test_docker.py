"""The Docker files, tested without a Docker engine: they agree, lint clean, and the image serves.

No Docker engine runs on our machines. These tests read the Dockerfile and the compose
files, check that they describe the same service (port, volume, command, healthcheck,
tokens recipe), and run hadolint on the Dockerfile; then they build the image with podman
and run it with buildah (tests/podman.py), as compose would start it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from app.cli import _parser
from app.tokens import read_tokens
from tests import podman
from tests.conftest import unavailable
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
# Whichever image test runs first builds the image, and on a new machine the stand-in base
# image too: debootstrap alone took 100 s on a loaded 2-core machine.
FIRST_BUILD_TIMEOUT = 900


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


# --- the image serves -------------------------------------------------------------


def access(port: int) -> str:
    """GET /access; returns the body of its 200 answer."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/access", timeout=5) as r:
        assert r.status == 200
        body: bytes = r.read()
        return body.decode()


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from the Dockerfile with podman (skips where podman cannot run)."""
    reason = podman.unavailable_reason()
    if reason:
        unavailable(reason)
    return podman.build_image()


@pytest.mark.slow
@pytest.mark.timeout(FIRST_BUILD_TIMEOUT)
def test_image_is_configured_as_the_dockerfile_says(image: str) -> None:
    """The built image has the Dockerfile's CMD, USER, environment, port, volume and
    healthcheck (the docker format keeps HEALTHCHECK; OCI would drop it)."""
    config = podman.image_config(image)
    dockerfile = parse_dockerfile()
    assert config["Cmd"] == exec_form(only(dockerfile, "CMD"))
    assert config["User"] == only(dockerfile, "USER")
    assert {f"{k}={v}" for k, v in image_env(dockerfile).items()} <= set(config["Env"])
    assert set(config["ExposedPorts"]) == {f"{only(dockerfile, 'EXPOSE')}/tcp"}
    assert set(config["Volumes"]) == set(exec_form(only(dockerfile, "VOLUME")))
    assert config["Healthcheck"]["Test"] == ["CMD", *healthcheck_command(dockerfile)]


@pytest.mark.slow
@pytest.mark.timeout(FIRST_BUILD_TIMEOUT)
def test_image_serves_and_keeps_its_count_in_the_volume_as_its_user(
    image: str, tmp_path: Path
) -> None:
    """The image's CMD serves /access 1, 2 and stops cleanly on SIGTERM; a new container on
    the same /data volume answers 3; gunicorn's master and workers run as the image's
    non-root user, which owns the database."""
    config = podman.image_config(image)
    uid = int(config["User"].split(":")[0])
    assert uid != 0
    port = free_port()
    # The image binds 0.0.0.0:8080; the container shares our network, so a loopback port.
    env = {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"}
    data = tmp_path / "data"
    with podman.Container(image, tmp_path) as container:
        container.new_volume(data, "/data")
        with container.serve(config["Cmd"], env) as served:
            served.wait_ready(port, workers=2)  # config/gunicorn.conf.py's default
            assert access(port) == "Resource accessed 1 times."
            assert access(port) == "Resource accessed 2 times."
            master, workers = served.gunicorn()
            assert len(workers) == 2
            assert {p.uid for p in [master, *workers]} == {uid}
            # The image's own healthcheck passes, run inside (its port swapped likewise).
            check = [c.replace(":8080/", f":{port}/") for c in config["Healthcheck"]["Test"][1:]]
            container.run(*check)
            assert served.stop() == 0, served.log.read_text()
    assert (data / "lockstep.db").stat().st_uid == uid
    with podman.Container(image, tmp_path) as container:
        container.mount(data, "/data")
        with container.serve(config["Cmd"], env) as served:
            served.wait_ready(port, workers=2)
            assert access(port) == "Resource accessed 3 times."
            assert served.stop() == 0, served.log.read_text()


@pytest.mark.slow
@pytest.mark.timeout(FIRST_BUILD_TIMEOUT)
def test_image_runs_the_compose_token_recipe(image: str, tmp_path: Path) -> None:
    """The recipe's `lockstep token` commands run in the image as its user, with the tokens
    overlay's environment and mount, and leave a mode-0600 file that user owns."""
    service = yaml.safe_load(TOKENS_COMPOSE.read_text())["services"]["lockstep"]
    [mount] = service["volumes"]
    source, target, *options = mount.split(":")
    secrets = tmp_path / PurePosixPath(source).name
    secrets.mkdir()
    uid, gid = (int(n) for n in only(parse_dockerfile(), "USER").split(":"))
    os.chown(secrets, uid, gid)  # the recipe's chown
    env = service["environment"]
    with podman.Container(image, tmp_path) as container:
        container.mount(secrets, target, *options)
        # One shell in the container runs them all (a buildah run costs most of a second).
        commands = compose_token_commands(TOKENS_COMPOSE.read_text())
        script = "".join(f"{shlex.join(words)}; echo --\n" for words in commands)
        output = container.run("sh", "-ec", script, env=env)
    outputs = dict(zip((w[2] for w in commands), output.split("--\n"), strict=False))
    assert outputs["new"].startswith("lst_")  # a token, printed once
    assert [line.split()[:2] for line in outputs["list"].splitlines()[1:]] == [
        ["ops", "write"],
        ["dashboard", "read"],
    ]
    assert outputs["revoke"] == "revoked token 'ops'\n"
    tokens = secrets / PurePosixPath(env["LOCKSTEP_TOKENS_FILE"]).name
    info = tokens.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o600)
    assert [t.label for t in read_tokens(tokens).tokens] == ["dashboard"]  # ops revoked
