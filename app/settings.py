"""The service's settings: one frozen object built from ``LOCKSTEP_*`` environment variables.

``load_settings`` is how the service and the ``lockstep`` command read them: a value the
service cannot run with becomes one line naming the variable, the value given and what is
allowed, derived from pydantic's validation error for every field alike.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, IPvAnyNetwork, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be configured with; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="LOCKSTEP_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        default=Path("data"),
        description="Directory holding the SQLite database file (created on first start).",
    )
    database_url: str = Field(
        default="",
        description=(
            "`sqlite:///path/to/file.db` (empty means `<data_dir>/lockstep.db`) or"
            " `postgresql://user:password@host:port/db` for the PostgreSQL backend."
        ),
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite `synchronous` level: FULL makes every 2xx survive power loss.",
    )
    busy_timeout_ms: int = Field(
        default=5000, ge=0, description="How long a write waits for another process's lock."
    )
    lock_timeout: float = Field(
        default=5.0, gt=0, description="Seconds a request may wait for its resource's lock."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest request body accepted (413 above)."
    )
    max_record_bytes: int | None = Field(
        default=None,
        ge=16,
        description=(
            "Largest stored record, as the bytes of the compact PUT body that writes it"
            " (413 above); unset: max_body_bytes, so every record can be PUT back."
        ),
    )
    body_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a request body may take to arrive (408 and closed after it).",
    )
    max_batch: int = Field(
        default=256, ge=1, description="Most write units committed in one transaction."
    )
    commit_gather: int = Field(
        default=40,
        ge=0,
        description=(
            "Event-loop turns a commit waits for more writes to join it while the worker is"
            " busy (0: commit at once)."
        ),
    )
    list_limit_max: int = Field(default=1000, ge=1, description="Largest `limit` on list calls.")

    # --- reliability: idempotency, shutdown, WAL -----------------------------------
    idempotency_ttl: float = Field(
        default=24 * 3600, gt=0, description="Seconds an Idempotency-Key and its response are kept."
    )
    idempotency_purge_interval: float = Field(
        default=60, gt=0, description="Seconds between sweeps that delete expired keys."
    )
    idempotency_purge_batch: int = Field(
        default=500, ge=1, description="Most expired keys deleted in one write transaction."
    )
    wal_size_limit: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="WAL bytes above which the writer checkpoints and truncates it (0: never).",
    )

    # --- PostgreSQL -------------------------------------------------------------------
    pg_pool_min_size: int = Field(
        default=1, ge=0, description="Connections each worker keeps open to PostgreSQL."
    )
    pg_pool_max_size: int = Field(
        default=10, ge=1, description="Most connections each worker opens to PostgreSQL."
    )
    pg_writers: int = Field(
        default=2,
        ge=1,
        description="Write transactions each worker may have in flight at once (group commit).",
    )
    pg_statement_cache_size: int = Field(
        default=100,
        ge=0,
        description=(
            "Prepared statements cached per connection; 0 disables them"
            " (PgBouncer in transaction mode older than 1.21)."
        ),
    )
    pg_command_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one statement may take before its connection is discarded (503).",
    )
    pg_connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds one connection attempt to PostgreSQL may take."
    )
    pg_startup_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds startup keeps retrying while PostgreSQL is unreachable.",
    )

    # --- security: tokens and input limits ----------------------------------------
    tokens_file: Path | None = Field(
        default=None,
        description="Tokens file (`lockstep token new` writes it); unset means the API is open.",
    )
    tokens_check_interval: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between checks of the tokens file for changes (0: every request).",
    )
    max_header_bytes: int = Field(
        default=8192,
        ge=256,
        le=65536,
        description="Largest total size of a request's header lines (431 above).",
    )
    max_json_depth: int = Field(
        default=32,
        ge=2,
        le=256,
        description="Deepest nesting of arrays and objects accepted in a JSON body (422 above).",
    )

    # --- observability: logs, metrics, events -----------------------------------------
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Per-request and error log lines: readable `text` or one JSON object a line.",
    )
    access_log: str = Field(
        default="-",
        description="Where the per-request lines go: `-` for stdout, or a file appended to.",
    )
    access_log_flush: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description=(
            "Most seconds an access line waits in its worker's buffer before it is written"
            " (what a crash can lose)."
        ),
    )
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = Field(
        default=(),
        description=(
            "Comma-separated addresses or networks of the proxies whose `X-Forwarded-For`"
            " names the client in the access log (none by default)."
        ),
    )
    events_poll_interval: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Seconds between checks for committed changes while event streams are open.",
    )
    events_heartbeat: float = Field(
        default=15.0,
        gt=0,
        description="Seconds of silence after which an event stream sends a keep-alive comment.",
    )
    send_timeout: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds an event stream or a large listing waits for its client to read before"
            " the connection is closed."
        ),
    )
    events_max_resources: int = Field(
        default=100, ge=1, le=1000, description="Most resources one GET /events stream may watch."
    )
    events_max_pending: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Change-log entries a stream holds for a client that reads slowly; past that it"
            " reads from the log instead of holding them."
        ),
    )
    changes_max_wait: float = Field(
        default=60, ge=0, le=60, description="Longest `wait` a GET /changes long poll may ask for."
    )
    locks_max_wait: float = Field(
        default=60, ge=0, le=60, description="Longest `wait` a POST /locks/{name} may ask for."
    )
    locks_poll_interval: float = Field(
        default=0.005,
        gt=0,
        le=10,
        description=(
            "Seconds between change-log reads while a lock acquire waits in the worker (how"
            " soon a hand-over made by another worker or host is seen)."
        ),
    )
    changes_retention: float = Field(
        default=24 * 3600,
        gt=0,
        description="Seconds change-log entries are kept (GET /changes, stream resume, history).",
    )
    txn_max_ops: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most conditions plus operations one POST /txn may hold (422 above).",
    )

    # --- gunicorn (read by config/gunicorn.conf.py) -----------------------------------
    bind: str = Field(
        default="127.0.0.1:8080",
        description="Listen address: HOST:PORT, unix:PATH or fd://N.",
    )
    reuse_port: bool = Field(
        default=True,
        description="Each worker listens on a socket of its own for a HOST:PORT bind"
        " (SO_REUSEPORT), which the kernel fills evenly; false shares one socket.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="gunicorn's log level; `warning` drops the access lines."
    )

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("should start with sqlite:///, postgresql:// or postgres://")
        return url

    @field_validator("bind")
    @classmethod
    def _listen_address(cls, bind: str) -> str:
        # Checked here so a bad address names LOCKSTEP_BIND, not gunicorn's "not a valid port".
        if bind.startswith(("unix:", "fd://")):
            return bind
        host, colon, port = bind.rpartition(":")
        if not (host and colon and port.isdigit() and int(port) <= 65535):
            raise ValueError("should be HOST:PORT (port 0-65535), unix:PATH or fd://N")
        return bind

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, proxies: Any) -> Any:
        if isinstance(proxies, str):
            return tuple(p.strip() for p in proxies.split(",") if p.strip())
        return proxies

    @property
    def access_log_on(self) -> bool:
        """Whether requests get their access lines (at ``info`` and ``debug``)."""
        return self.log_level in ("debug", "info")

    @property
    def record_limit(self) -> int:
        """The stored-size cap in force: ``max_record_bytes``, else the body limit."""
        return self.max_body_bytes if self.max_record_bytes is None else self.max_record_bytes

    @property
    def uses_postgres(self) -> bool:
        """Whether ``database_url`` names a PostgreSQL server."""
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file this service uses."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :])
        return self.data_dir / "lockstep.db"


class InvalidSettings(ValueError):
    """The environment holds settings the service cannot run with; ``str()`` is one line."""


def load_settings() -> Settings:
    """The settings from the environment, or ``InvalidSettings`` saying what to change."""
    try:
        return Settings()
    except ValidationError as e:
        raise InvalidSettings(describe_invalid(e)) from None


def describe_invalid(error: ValidationError) -> str:
    """One line naming each bad variable, the value it was given, and what is allowed."""
    prefix = Settings.model_config.get("env_prefix", "")
    problems = []
    for problem in error.errors(include_url=False):
        reason = problem["msg"]
        cause = problem.get("ctx", {}).get("error")
        if problem["type"] == "value_error" and cause is not None:
            reason = str(cause)  # a validator's own words, without "Value error, "
        reason = reason[:1].lower() + reason[1:]
        if not problem["loc"]:
            problems.append(reason)
            continue
        variable = f"{prefix}{problem['loc'][0]}".upper()
        # What the environment holds, as typed (log_level's validator lowercases it).
        given = os.environ.get(variable, str(problem["input"]))
        problems.append(f"{variable}={shlex.quote(given)}: {reason}")
    return "invalid setting " + "; ".join(problems)


SETTINGS = web.AppKey("settings", Settings)
