"""Tests of the middlewares: unknown paths, unexpected errors, routes added after create_app."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web

from app.main import create_app
from tests.conftest import ClientFactory, never_reaches_storage, settings_for
from tests.views.helpers import Client, assert_problem


@never_reaches_storage
async def test_unknown_path_is_404_problem(client: Client) -> None:
    """A URL no route matches is a 404 problem body, not aiohttp's plain text."""
    async with client.get("/nowhere") as r:
        await assert_problem(r, 404, "not-found", "no such path: /nowhere")


async def test_unexpected_error_is_500_problem_without_internals(
    aiohttp_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is logged once and answered by a 500 that reveals nothing."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app = await create_app(settings_for(tmp_path))
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="app.middleware"):
        async with client.get("/boom") as r:
            body = await assert_problem(r, 500, None, "an unexpected error occurred")
            assert "secret" not in await r.text()
    assert body["title"] == "Internal Server Error"
    errors = [rec for rec in caplog.records if rec.name == "app.middleware"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "secret internals" in str(errors[0].exc_info[1])


@never_reaches_storage
async def test_unknown_path_and_method_are_counted_unmatched(client: Client) -> None:
    """404s and 405s land under the (unmatched) route label, never a path or template."""
    async with client.get("/nowhere/at/all") as r:
        assert r.status == 404
        assert r.headers["X-Request-ID"]
    async with client.post("/counters") as r:
        await assert_problem(r, 405, "method-not-allowed", "allows only")
        assert r.headers["Allow"] == "GET, HEAD"
    text = await (await client.get("/metrics")).text()
    assert 'route="(unmatched)",status="404"' in text
    assert 'route="(unmatched)",status="405"' in text
    assert "{tail}" not in text
