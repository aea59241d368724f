"""Tests of the problem+json middleware: unknown paths and unexpected errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web

from app.main import create_app
from tests.conftest import ClientFactory, settings_for
from tests.views.helpers import Client, assert_problem


async def test_unknown_path_is_404_problem(client: Client) -> None:
    """A URL no route matches is a 404 problem body, not aiohttp's plain text."""
    async with client.get("/nowhere") as r:
        await assert_problem(r, 404, None, "Not Found")


async def test_unexpected_error_is_500_problem_without_internals(
    aiohttp_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is logged once and answered by a 500 that reveals nothing."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app = await create_app(settings_for(tmp_path))
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="app.middlewares"):
        async with client.get("/boom") as r:
            body = await assert_problem(r, 500, None, "an unexpected error occurred")
            assert "secret" not in await r.text()
    assert body["title"] == "Internal Server Error"
    errors = [rec for rec in caplog.records if rec.name == "app.middlewares"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "secret internals" in str(errors[0].exc_info[1])
