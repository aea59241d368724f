"""Shared fixtures: a settings object per test and an in-process client on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app.main import create_app
from app.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with a private database under ``tmp_path``."""
    return Settings(data_dir=tmp_path / "data", **overrides)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> TestClient[Any, Any]:
    """A test client on a fresh app with its own database."""
    return await aiohttp_client(await create_app(settings))


@pytest.fixture(autouse=True)
def _no_tokens_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A LOCKSTEP_TOKENS_FILE exported in the developer's shell must not secure every test."""
    monkeypatch.delenv("LOCKSTEP_TOKENS_FILE", raising=False)
