"""Request ids and the per-request log line, in one process."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.logs import ACCESS_LOGGER, LogFormatter, request_id_from
from app.main import create_app
from app.state import ENVELOPE
from tests.conftest import ClientFactory, settings_for


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_request_id_from_client_is_returned_and_logged(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed X-Request-ID comes back unchanged and is on the request's log line, which
    names the route template and the path without its query string."""
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    r = await client.post(
        "/counters/a/increment?token=secret", headers={"X-Request-ID": "req-42.a:b"}
    )
    assert r.status == 200
    assert r.headers["X-Request-ID"] == "req-42.a:b"
    [record] = access_records(caplog)
    assert record.request_id == "req-42.a:b"  # type: ignore[attr-defined]
    assert record.route == "/counters/{name}/increment"  # type: ignore[attr-defined]
    assert record.path == "/counters/a/increment"  # type: ignore[attr-defined]
    assert record.method == "POST"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    assert record.latency_ms >= 0  # type: ignore[attr-defined]
    assert 0 <= record.lock_wait_ms < 100  # type: ignore[attr-defined]


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

    app = await create_app(settings_for(tmp_path))
    app.router.add_get("/boom", app[ENVELOPE](boom))
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
    [access] = access_records(caplog)
    assert access.status == 500  # type: ignore[attr-defined]


def test_json_format_is_one_object_per_line() -> None:
    """The JSON formatter writes every field of the request line as one JSON object."""
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
