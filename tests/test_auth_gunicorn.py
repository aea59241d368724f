"""Access control under real gunicorn: both workers honour revocation, tokens stay out of logs."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import pytest
import yaml

from app.tokens import add_token, revoke_token
from tests.support import ROOT, Service, free_port


def status_of(url: str, token: str | None = None, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        e.close()
        return e.code


@pytest.mark.slow
def test_revoked_token_is_refused_by_every_worker(tmp_path: Path) -> None:
    """After revoke, each of 2 workers refuses the token within the check interval, no restart."""
    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "ci", "write")
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens)}
    with Service(tmp_path / "data", workers=2, env=env) as svc:
        assert status_of(svc.url + "/counters", token) == 200
        assert status_of(svc.url + "/counters") == 401
        assert revoke_token(tokens, "ci")
        deadline = time.monotonic() + 15
        streak = 0
        # Connections are new each time, so both workers answer over 40 requests in a row.
        while streak < 40 and time.monotonic() < deadline:
            streak = streak + 1 if status_of(svc.url + "/counters", token) == 401 else 0
        assert streak == 40
        assert status_of(svc.url + "/healthz") == 200


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.mark.slow
def test_tokens_never_appear_in_logs(tmp_path: Path) -> None:
    """Good, unknown and malformed-request tokens are absent from access and error logs, and
    from /metrics, on plain requests, /stats and event streams alike."""
    tokens = tmp_path / "tokens.json"
    good = add_token(tokens, "ci", "write")
    scraper = add_token(tokens, "scraper", "metrics")
    unknown = "lst_unknown-token-that-must-not-be-logged"
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens), "LOCKSTEP_LOG_LEVEL": "debug"}
    args = ["--access-logfile", "-"]  # the project's access log format
    with Service(tmp_path / "data", workers=2, env=env, args=args) as svc:
        assert status_of(svc.url + "/counters/x/increment", good, "POST") == 200
        assert status_of(svc.url + "/counters", unknown) == 401
        assert status_of(svc.url + "/access", unknown) == 401
        bad = (
            f"PUT /items/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {good}\r\n"
            "X-Bad: \x01\r\nContent-Length: 2\r\n\r\n{}"
        ).encode()
        assert asyncio.run(_raw(svc.port, bad)).startswith(b"HTTP/1.0 400")
        assert status_of(svc.url + "/stats", good) == 200
        stream = urllib.request.Request(
            svc.url + "/events?counter=x", headers={"Authorization": f"Bearer {good}"}
        )
        with urllib.request.urlopen(stream, timeout=10) as resp:
            assert resp.status == 200
            assert resp.readline().startswith(b"retry:")
        metrics = urllib.request.Request(
            svc.url + "/metrics", headers={"Authorization": f"Bearer {scraper}"}
        )
        # Each worker hands its figures to the shared metrics files once a second, so the
        # worker answering this scrape may see /stats (served by the other) a moment later.
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(metrics, timeout=10) as resp:
                exposition = resp.read().decode()
            if 'route="/stats"' in exposition or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    log = svc.log()  # complete: the service has stopped and flushed its access log
    assert "/counters/x/increment" in log and "/stats" in log  # the access log did run
    assert good not in log and unknown not in log and scraper not in log
    assert 'route="/stats"' in exposition
    assert good not in exposition and unknown not in exposition and scraper not in exposition


@pytest.mark.slow
def test_parser_refused_requests_log_no_token_and_no_traceback(tmp_path: Path) -> None:
    """Requests the HTTP parser refuses, their Authorization carrying a valid token, get a 400
    problem body (415 for a br body, as under the test server) and one INFO line each: the
    token is in neither, and nothing is at ERROR."""
    tokens = tmp_path / "tokens.json"
    good = add_token(tokens, "ci", "write")
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens), "LOCKSTEP_LOG_LEVEL": "debug"}
    head = f"GET /counters HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {good}"
    refused = [
        # Past the parser's cap of 4 x LOCKSTEP_MAX_HEADER_BYTES (aiohttp quoted 100 bytes).
        head + "x" * 40_000 + "\r\n\r\n",
        # A forbidden byte in the value (aiohttp quoted the whole line).
        head + "\x01\r\n\r\n",
        # Too many header lines (aiohttp logged a traceback for it).
        head + "\r\n" + "".join(f"X-{i}: y\r\n" for i in range(200)) + "\r\n",
        # A body in an encoding aiohttp has no decoder for.
        head.replace("GET /counters", "PUT /items/x")
        + "\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    ]
    with Service(tmp_path / "data", workers=1, env=env) as svc:
        answers = [asyncio.run(_raw(svc.port, request.encode())) for request in refused]
    log = svc.log()  # complete: the service has stopped
    assert answers[-1].startswith(b"HTTP/1.0 415 "), answers[-1][:300]
    assert b'"type":"urn:lockstep:problem:unsupported-media-type"' in answers[-1]
    for answer in answers:
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.0 415 ")), answer[:300]
        assert b"Content-Type: application/problem+json" in answer, answer[:300]
        assert good.encode() not in answer and b"Bearer" not in answer.partition(b"\r\n\r\n")[2]
    assert log.count("refused by the HTTP parser") == len(refused)
    assert good not in log
    assert "Traceback" not in log and " ERROR " not in log


@pytest.mark.slow
def test_open_service_warns_only_when_bound_beyond_loopback(tmp_path: Path) -> None:
    """Without a tokens file, a 0.0.0.0 bind logs the OPEN warning; a loopback bind does not."""
    wide = f"0.0.0.0:{free_port()}"
    with Service(tmp_path / "wide", workers=1, args=["--bind", wide]) as svc:
        assert status_of(svc.url + "/healthz") == 200
        log = svc.log()
    assert f"lockstep is OPEN on {wide}" in log
    with Service(tmp_path / "local", workers=1) as svc:
        assert status_of(svc.url + "/healthz") == 200
        log = svc.log()
    assert "Listening at" in log and "is OPEN" not in log


def test_compose_tokens_override_mounts_a_directory_holding_the_tokens_file() -> None:
    """The compose override sets LOCKSTEP_TOKENS_FILE inside a directory mount the image's
    user can write, so `lockstep token` run through compose can replace the file."""
    compose = yaml.safe_load((ROOT / "docker-compose.tokens.yml").read_text())
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["lockstep"]
    assert set(compose["services"]) <= set(base["services"])
    tokens_file = PurePosixPath(service["environment"]["LOCKSTEP_TOKENS_FILE"])
    [mount] = service["volumes"]
    source, target, *mode = mount.split(":")
    # A directory mount: atomic replacement by `lockstep token` must stay visible.
    assert tokens_file.parent == PurePosixPath(target)
    assert source.startswith("./") and "ro" not in mode
