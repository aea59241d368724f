"""PostgreSQL connections: the pool, the failures that mean "not there right now", migration.

Shared by the writer (``app.storage.postgres.writer``) and the reads
(``app.storage.postgres.storage``). A connection is terminated instead of returned to the
pool when anything but SQL went wrong on it, and the pool skips asyncpg's per-release
session reset, since nothing session-level is ever set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from app.domain import Record
from app.errors import StorageUnavailable
from app.settings import Settings
from app.startup import StartupError
from app.storage.postgres.schema import migrate

# What the pool hands out; it forwards every call to the real connection.
Connection = asyncpg.pool.PoolConnectionProxy

logger = logging.getLogger(__name__)


# Failures that mean "the database is not there right now": answered with 503.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # protocol state after the server dropped the connection
    asyncpg.OperatorInterventionError,  # admin shutdown, cannot connect now, query canceled
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # still deadlocking after RETRIES
)


def error_kind(e: BaseException) -> str | None:
    """The bounded metric kind (``DB_ERROR_KINDS``) of a database failure, or None."""
    if isinstance(e, asyncpg.DiskFullError):
        return "full"
    if isinstance(e, asyncpg.ReadOnlySQLTransactionError):
        return "readonly"
    if isinstance(e, asyncpg.TransactionRollbackError | asyncpg.LockNotAvailableError):
        return "locked"
    if isinstance(e, asyncpg.InsufficientResourcesError):
        return "busy"
    if isinstance(e, asyncpg.DataCorruptedError | asyncpg.IndexCorruptedError):
        return "corrupt"
    if isinstance(e, UNAVAILABLE):
        return "io"
    if isinstance(e, asyncpg.PostgresError):
        return "other"
    return None


def translate(e: BaseException) -> BaseException:
    if isinstance(e, UNAVAILABLE):
        return StorageUnavailable(f"database: {type(e).__name__}: {e}")
    return e


def keeps_connection(e: BaseException) -> bool:
    """Whether the connection is certainly idle and outside a transaction after ``e``."""
    return isinstance(e, asyncpg.PostgresError) and not isinstance(
        e, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError
    )


@asynccontextmanager
async def connection(pool: asyncpg.Pool, wait: float) -> AsyncIterator[Connection]:
    """A pooled connection, terminated instead of reused if anything but SQL went wrong."""
    async with pool.acquire(timeout=wait) as conn:
        try:
            yield conn
        except BaseException as e:
            if not keeps_connection(e):
                conn.terminate()
            raise


def decode_record(row: Any) -> Record:
    return Record(row[0], msgspec.json.decode(row[1]), row[2], row[3])


async def skip_session_reset(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing session-level is ever set, so there is nothing to reset.

    asyncpg's default sends ``RESET ALL; UNLISTEN *; ...`` on every release, one more
    round trip per request. An open transaction is still rolled back on release: the pool
    does that itself before calling this hook.
    """


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """Connect and migrate, retrying for ``pg_startup_timeout`` while the server is unreachable."""
    deadline = time.monotonic() + settings.pg_startup_timeout
    server, waiting = _server_of(settings.database_url), False
    while True:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=min(settings.pg_pool_min_size, settings.pg_pool_max_size),
                max_size=settings.pg_pool_max_size,
                statement_cache_size=settings.pg_statement_cache_size,
                command_timeout=settings.pg_command_timeout,
                timeout=settings.pg_connect_timeout,
                reset=skip_session_reset,
                # A startup parameter PgBouncer understands; lets operators find our sessions.
                server_settings={"application_name": "lockstep"},
            )
        except REFUSED as e:
            raise StartupError(
                f"PostgreSQL at {server} refused lockstep's connection ({e});"
                " correct the user, password or database name in LOCKSTEP_DATABASE_URL"
            ) from e
        except UNAVAILABLE as e:
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"cannot reach PostgreSQL at {server} in {settings.pg_startup_timeout:g} s"
                    f" ({_reason(e)}); start it, or correct LOCKSTEP_DATABASE_URL"
                    " (LOCKSTEP_PG_STARTUP_TIMEOUT sets how long to wait)"
                ) from e
            if not waiting:  # once: waiting for the database is part of a normal start
                waiting = True
                logger.info(
                    "PostgreSQL at %s unreachable (%s); retrying for up to %g s",
                    server,
                    _reason(e),
                    settings.pg_startup_timeout,
                )
            await asyncio.sleep(0.5)
            continue
        try:
            async with connection(pool, settings.pg_command_timeout) as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return pool


# The server answered and said no: retrying cannot help, the URL must change.
REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # wrong password, unknown role, pg_hba
    asyncpg.InvalidCatalogNameError,  # no such database
)


def _server_of(url: str) -> str:
    """``host:port`` of a PostgreSQL URL, never its password; a phrase when it has no host."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        host = None
    if not host:
        return "the server LOCKSTEP_DATABASE_URL names"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror  # "Connection refused", without the errno and the address tried
    return str(e) or type(e).__name__
