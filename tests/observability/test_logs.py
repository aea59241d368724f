"""Request ids, error lines and the access line's content, in one process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from app.access_log import ACCESS_LOG, FLUSH_BYTES, AccessLog, client_address
from app.logs import ACCESS_LOGGER, LogFormatter, request_id_from
from app.main import create_app
from tests.conftest import ClientFactory, settings_for
from tests.support import ROOT


def access_lines(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    """The JSON access lines the client's app has written, after writing what it buffered."""
    access_log = client.app[ACCESS_LOG]
    assert access_log is not None
    access_log.flush()
    text = Path(access_log.destination).read_text()
    return [json.loads(line) for line in text.splitlines()]


async def json_client(aiohttp_client: ClientFactory, tmp_path: Path) -> TestClient[Any, Any]:
    return await aiohttp_client(await create_app(settings_for(tmp_path, log_format="json")))


async def test_request_id_from_client_is_returned_and_logged(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A well-formed X-Request-ID comes back unchanged and is on the request's access line,
    which names the route template and the path without its query string."""
    client = await json_client(aiohttp_client, tmp_path)
    r = await client.post(
        "/counters/a/increment?token=secret",
        headers={"X-Request-ID": "req-42.a:b", "User-Agent": 'probe "1"'},
    )
    assert r.status == 200
    assert r.headers["X-Request-ID"] == "req-42.a:b"
    [line] = access_lines(client)
    assert line["request_id"] == "req-42.a:b"
    assert line["logger"] == ACCESS_LOGGER and line["message"] == "request"
    assert line["route"] == "/counters/{name}/increment"
    assert line["path"] == "/counters/a/increment"
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert line["client"] == "127.0.0.1"
    assert line["user_agent"] == 'probe "1"'
    assert line["latency_ms"] >= 0
    assert 0 <= line["lock_wait_ms"] < 100


async def test_access_log_off_above_info(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """``LOCKSTEP_LOG_LEVEL=warning`` turns the access lines off: nothing is written."""
    settings = settings_for(tmp_path, log_level="WARNING")
    client = await aiohttp_client(await create_app(settings))
    assert (await client.get("/access")).status == 200
    assert client.app[ACCESS_LOG] is None
    assert not (tmp_path / "access.log").exists()


async def test_request_id_is_sanitised_and_bounded(client: TestClient[Any, Any]) -> None:
    """Unsafe characters are dropped and long ids cut to 64 characters; empty ones replaced."""
    r = await client.get("/healthz", headers={"X-Request-ID": 'a b"c<d>\\e'})
    assert r.status == 200
    assert r.headers["X-Request-ID"] == "abcde"
    r = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert r.headers["X-Request-ID"] == "x" * 64
    r = await client.get("/healthz", headers={"X-Request-ID": '"" <>'})
    generated = r.headers["X-Request-ID"]
    assert len(generated) == 24 and all(c in "0123456789abcdef" for c in generated)


async def test_request_id_generated_when_absent_and_on_errors(
    client: TestClient[Any, Any],
) -> None:
    """Every answer, problem bodies included, carries a fresh id when the client sent none."""
    ok = await client.get("/healthz")
    missing = await client.get("/counters/none")
    assert ok.status == 200 and missing.status == 404
    ids = {ok.headers["X-Request-ID"], missing.headers["X-Request-ID"]}
    assert len(ids) == 2


def test_request_id_from_keeps_only_safe_characters() -> None:
    """Control characters and newlines can never reach a log line through the id."""
    assert request_id_from("ok\r\nX-Evil: 1") == "okX-Evil:1"
    assert request_id_from(None) != request_id_from(None)


async def test_unhandled_error_logged_once_with_the_id_the_client_gets(
    aiohttp_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash answers a 500 problem whose request_id matches the one traceback logged for it."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    app = await create_app(settings_for(tmp_path, log_format="json"))
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO)
    r = await client.get("/boom", headers={"X-Request-ID": "crash-1"})
    assert r.status == 500
    body = await r.json()
    assert body["request_id"] == "crash-1"
    assert "secret" not in json.dumps(body)
    assert r.headers["X-Request-ID"] == "crash-1"
    errors = [rec for rec in caplog.records if rec.exc_info]
    assert len(errors) == 1
    formatted = LogFormatter("json").format(errors[0])
    line = json.loads(formatted)
    assert line["request_id"] == "crash-1"
    assert "secret internal detail" in line["error"]
    [access] = access_lines(client)
    assert (access["request_id"], access["status"]) == ("crash-1", 500)


def test_json_format_is_one_object_per_line() -> None:
    """The JSON formatter writes every field of a record as one JSON object."""
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "request", None, None)
    record.__dict__.update(
        request_id="r1", method="GET", route="/access", status=200, latency_ms=1.5, lock_wait_ms=0.2
    )
    text = LogFormatter("json").format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["request_id"] == "r1"
    assert line["route"] == "/access"
    assert line["status"] == 200
    assert line["lock_wait_ms"] == 0.2
    assert isinstance(line["pid"], int)
    assert line["time"].endswith("Z")


def test_text_format_is_readable_key_values() -> None:
    """The text formatter writes time, level, pid, logger, request id and key=value fields."""
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "request", None, None)
    record.__dict__.update(request_id="r1", route="/access", status=200)
    text = LogFormatter("text").format(record)
    assert " INFO [" in text
    assert "request_id=r1 request route=/access status=200" in text


async def test_text_access_line_quotes_the_user_agent(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A text access line is key=value fields with the user agent quoted, so a user agent
    with spaces or quotes cannot forge fields or lines."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path)))
    agent = 'evil status=999 "x'
    r = await client.get("/counters/none?q=1", headers={"X-Request-ID": "t1", "User-Agent": agent})
    assert r.status == 404
    client.app[ACCESS_LOG].flush()
    [line] = (tmp_path / "access.log").read_text().splitlines()
    assert " INFO [" in line and " app.access request_id=t1 request client=127.0.0.1 " in line
    assert " method=GET route=/counters/{name} path=/counters/none status=404 " in line
    assert " latency_ms=" in line and " lock_wait_ms=" in line
    assert line.endswith(' user_agent="evil status=999 \\"x"')


def _via(peer: str, forwarded: str | None) -> web.BaseRequest:
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000)
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    return make_mocked_request("GET", "/access", headers=headers, transport=transport)


def test_forwarded_for_only_from_trusted_proxies() -> None:
    """X-Forwarded-For names the client only when the peer is a trusted proxy; then the
    nearest hop that is not a trusted proxy is the client, whatever the client prepended."""
    trusted = (IPv4Network("10.0.0.0/8"), IPv6Network("::1/128"))
    assert client_address(_via("203.0.113.9", "1.2.3.4"), trusted) == "203.0.113.9"
    assert client_address(_via("10.0.0.2", None), trusted) == "10.0.0.2"
    assert client_address(_via("10.0.0.2", "1.2.3.4"), ()) == "10.0.0.2"
    assert client_address(_via("10.0.0.2", "6.6.6.6, 1.2.3.4"), trusted) == "1.2.3.4"
    assert client_address(_via("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.1.1.1"), trusted) == "1.2.3.4"
    assert client_address(_via("::1", "2001:db8::5"), trusted) == "2001:db8::5"
    # A malformed hop stops the walk at the last trusted proxy.
    assert client_address(_via("10.0.0.2", "1.2.3.4, bogus"), trusted) == "10.0.0.2"
    # Every hop trusted: the farthest one is all that is known.
    assert client_address(_via("10.0.0.2", "10.9.9.9"), trusted) == "10.9.9.9"


async def test_lines_buffered_until_full_or_dropped(tmp_path: Path) -> None:
    """Lines wait in the buffer until it holds 64 KB, which goes out in one piece; ``close``
    writes the rest."""
    path = tmp_path / "lines.log"
    access_log = AccessLog(str(path))
    access_log.open()
    request = _via("10.0.0.2", None)
    access_log.line(request, "/access", 200, 0.001, 0.0, "r0")
    assert path.read_bytes() == b""
    n = 1
    while not path.read_bytes():
        access_log.line(request, "/access", 200, 0.001, 0.0, f"r{n}")
        n += 1
    written = path.read_text().splitlines()
    assert len(written) == n and FLUSH_BYTES <= len(path.read_bytes()) < FLUSH_BYTES + 1024
    access_log.close()
    assert len(path.read_text().splitlines()) == n


EXIT_WITHOUT_CLOSE = """
import asyncio, sys
from aiohttp.test_utils import make_mocked_request
from app.access_log import AccessLog

async def main():
    access_log = AccessLog(sys.argv[1], "json")
    access_log.open()
    access_log.line(make_mocked_request("GET", "/access"), "/access", 200, 0.001, 0.0, "last")
    sys.exit(3)

asyncio.run(main())
"""


def test_lines_written_when_the_process_exits_without_close(tmp_path: Path) -> None:
    """A worker that exits without a graceful shutdown (gunicorn aborts one that misses its
    timeout) still writes the lines it buffered."""
    path = tmp_path / "lines.log"
    done = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(path)], cwd=ROOT)
    assert done.returncode == 3
    [line] = path.read_text().splitlines()
    assert json.loads(line)["request_id"] == "last"
