"""The service's settings: one frozen object built from ``LOCKSTEP_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be configured with; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="LOCKSTEP_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        default=Path("data"),
        description="Directory holding the SQLite database file (created on first start).",
    )
    database_url: str = Field(
        default="",
        description="`sqlite:///path/to/file.db`; empty means `<data_dir>/lockstep.db`.",
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
    max_batch: int = Field(
        default=256, ge=1, description="Most write units committed in one transaction."
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
    events_max_resources: int = Field(
        default=100, ge=1, le=1000, description="Most resources one GET /events stream may watch."
    )

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file this service uses."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :])
        return self.data_dir / "lockstep.db"
