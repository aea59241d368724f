"""Shared fixtures: settings for a fresh database (once per backend), storage and an in-process
client on it.

A test that uses them runs on every backend in ``BACKENDS``, unless it (or its module) is
marked ``@pytest.mark.backends("sqlite")``: the mark for tests whose requests never reach
storage (validation, routing, negotiation) and for tests of one backend's internals.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from app.main import create_app
from app.settings import Settings
from app.storage import Storage
from app.storage.backends import open_storage

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

# Fixtures of gunicorn hosts shared by modules (module_hosts, hosts).
pytest_plugins = ["tests.hosts"]

POSTGRES_URL_ENV = "LOCKSTEP_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgres"]


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with a private database and access log under ``tmp_path``."""
    overrides.setdefault("access_log", str(tmp_path / "access.log"))
    return Settings(data_dir=tmp_path / "data", **overrides)


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose outside part (a server, a browser, wrk) is missing; fail under ``CI``.

    A developer's machine may lack them; CI installs and starts all of them
    (``scripts/system-deps.sh``, ``make test``), so there a missing one is a broken setup.
    """
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def postgres_server_url() -> str:
    """The test server's URL; skips the test without one (fails instead when ``CI`` is set)."""
    url = os.environ.get(POSTGRES_URL_ENV, "")
    if not url:
        unavailable(f"no PostgreSQL server: set {POSTGRES_URL_ENV} (make test does it as root)")
    return url


@asynccontextmanager
async def fresh_postgres_url() -> AsyncIterator[str]:
    """A URL whose connections see only a new, empty schema, dropped again afterwards."""
    base = postgres_server_url()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    await _admin(base, f"CREATE SCHEMA {schema}")
    try:
        # asyncpg passes unknown URL parameters to the server as session settings.
        yield f"{base}{'&' if '?' in base else '?'}search_path={schema}"
    finally:
        # A new connection: the test may have restarted the server meanwhile.
        await _admin(base, f"DROP SCHEMA {schema} CASCADE")


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def backend_settings(
    backend: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[Settings]:
    """Settings for a fresh, private database on ``backend`` ("sqlite" or "postgres")."""
    if backend == "sqlite":
        yield settings_for(tmp_path, **overrides)
        return
    async with fresh_postgres_url() as url:
        yield settings_for(tmp_path, database_url=url, **overrides)


@asynccontextmanager
async def backend_env(backend: str) -> AsyncIterator[dict[str, str]]:
    """The environment a gunicorn service needs for a fresh database on ``backend`` (SQLite:
    none, its data dir holds it)."""
    if backend == "sqlite":
        yield {}
        return
    async with fresh_postgres_url() as url:
        yield {"LOCKSTEP_DATABASE_URL": url}


# Marks a test whose requests are refused before any storage call (validation, routing,
# limits): it runs on one backend, since every other would take the same path.
never_reaches_storage = pytest.mark.backends("sqlite")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give each test that needs a backend every one in ``BACKENDS``, or those it is marked with."""
    for fixture in ("backend", "module_backend"):
        if fixture in metafunc.fixturenames:
            marker = metafunc.definition.get_closest_marker("backends")
            metafunc.parametrize(fixture, marker.args if marker else BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend this run of the test uses ("sqlite" or "postgres")."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def module_backend(request: pytest.FixtureRequest) -> str:
    """The backend of a service that a whole module's tests share; they run grouped by it."""
    name: str = request.param
    return name


@pytest.fixture
async def settings(backend: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for a fresh database on ``backend``."""
    async with backend_settings(backend, tmp_path) as settings:
        yield settings


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    """The backend ``settings`` names, opened on its fresh database and closed afterwards."""
    storage = await open_storage(settings)
    yield storage
    await storage.close()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> TestClient[Any, Any]:
    """A test client on a fresh app with its own database."""
    return await aiohttp_client(await create_app(settings))


@pytest.fixture(autouse=True)
def _no_tokens_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A LOCKSTEP_TOKENS_FILE exported in the developer's shell must not secure every test."""
    monkeypatch.delenv("LOCKSTEP_TOKENS_FILE", raising=False)
