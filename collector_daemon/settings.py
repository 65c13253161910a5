"""Configuration of the collector, read from the environment (prefix ``TICKVAULT_``) or a ``.env``
file by pydantic-settings. Every variable is documented in the README's configuration table.

A missing or invalid value fails at start with the variable's name (``SettingsError``); nothing
has a default password, and the database URL has no default at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


#: Deribit: WebSockets and HTTP requests together, per IP (docs: connection management).
DERIBIT_CONNECTIONS_PER_IP = 32


class SettingsError(RuntimeError):
    """A configuration variable is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    """Collector settings. Field ``x`` is read from ``TICKVAULT_X``."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_", env_file=".env", extra="ignore")

    database_url: SecretStr = Field(
        description="PostgreSQL/TimescaleDB URL, e.g. postgresql://user:pw@host:5432/tickvault. Required.")
    venue: Literal["deribit"] = Field("deribit", description="Exchange to collect from.")
    deribit_ws_url: str = Field("wss://www.deribit.com/ws/api/v2", description="Deribit WebSocket endpoint.")
    deribit_rest_url: str = Field("https://www.deribit.com/api/v2", description="Deribit REST base URL.")
    currency: str = Field("ETH", description="Currencies collected, comma-separated (ETH or ETH,BTC).")
    kind: str = Field("option", description="Instrument kinds collected, comma-separated (option or option,future).")
    shard: str = Field("1/1", description=(
        "k/n: this daemon owns the instruments whose name hashes to shard k of n (scale-out; "
        "every shard also takes the chain-wide trades channels, deduplicated by the database)."))
    channels_per_connection: int = Field(500, ge=1, le=5000, description=(
        "Channels per WebSocket connection; the subscription set is spread over "
        "ceil(channels / this) connections (at most max_connections)."))
    max_connections: int = Field(16, ge=1, le=28, description=(
        "Most WebSocket connections per daemon (Deribit allows 32 per IP, REST included: this + "
        "2 x TICKVAULT_REST_MAX_CONCURRENCY must stay within 32, checked at start)."))
    failover_s: float = Field(30.0, gt=0, description=(
        "A connection down this long hands its channels to the other connections (s)."))
    top_n: int | None = Field(
        50, description="Keep the top N instruments by open interest; empty or 'all' = the whole chain.")
    universe_refresh_s: float = Field(300.0, gt=0, description=(
        "Seconds between re-reads of the universe table (a NOTIFY from Dagster is acted on at once)."))
    universe_stale_s: float = Field(5400.0, gt=0, description=(
        "Refresh the universe from REST itself when nobody (Dagster's hourly instrument_universe) "
        "refreshed the table for this long (s); REST is otherwise used only while the table is empty."))
    heartbeat_s: int = Field(10, ge=10, description="Deribit public/set_heartbeat interval (s, >= 10).")
    batch_rows: int = Field(10_000, ge=1, description="Rows per COPY batch.")
    flush_interval_s: float = Field(1.0, gt=0, description="A partial batch is flushed at least this often (s).")
    queue_batches: int = Field(4, ge=1, description="Sealed batches the writer queue holds before the reader waits.")
    ws_recv_buffer_bytes: int = Field(2**20, ge=0, description=(
        "SO_RCVBUF of each WebSocket (bytes; the kernel doubles it); 0 = the OS's autotuning. It "
        "bounds what one socket read hands the client, which parses all of it at once."))
    backoff_min_s: float = Field(1.0, gt=0, description=(
        "Reconnect delays grow exponentially from this (s), with jitter, every delay within [min, max]."))
    backoff_max_s: float = Field(60.0, gt=0, description="Reconnect delay cap (s).")
    write_timeout_s: float = Field(5.0, gt=0, description=(
        "Longest one database write attempt may take before its batch goes to the spool (s)."))
    refused_retry_s: float = Field(10.0, gt=0, description="Channels the exchange refused are requested again after this long (s).")
    silence_reconnect_s: float = Field(30.0, gt=0, description=(
        "Reconnect when no frame at all (data or heartbeat) arrived for this long (s)."))
    quotes_stale_warn_s: float = Field(60.0, gt=0, description="Warn when no ticker arrived for this long (s).")
    quotes_stale_reconnect_s: float = Field(600.0, gt=0, description="Reconnect when no ticker arrived for this long (s).")
    trades_stale_warn_s: float = Field(3600.0, gt=0, description=(
        "Warn when no trade arrived for this long (s); trades never force a reconnect (quiet nights)."))
    rest_max_concurrency: int = Field(4, ge=1, le=16, description=(
        "Concurrent REST requests per client (the universe refresh and a gap recovery may run at "
        "once; each request counts toward Deribit's 32 connections per IP)."))
    deribit_history_url: str | None = Field(None, description=(
        "Archive REST host for trade windows older than 24 h (e.g. https://history.deribit.com/api/v2); "
        "empty = such windows are left to the Dagster backfill."))
    shutdown_recovery_s: float = Field(30.0, ge=0, description=(
        "At shutdown, how long to spend recovering the last gaps before leaving them to Dagster (s)."))
    metrics_host: str = Field("127.0.0.1", description="Bind address of /metrics and /healthz.")
    metrics_port: int | None = Field(9108, description="Port of /metrics and /healthz; empty = off; 0 = any free port.")
    stats_interval_s: float = Field(60.0, gt=0, description="Seconds between stats log lines.")
    status_interval_s: float = Field(5.0, gt=0, description="Seconds between collector_status heartbeats.")
    collector_id: str | None = Field(None, description="Name of this collector in collector_status; default host:pid.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    spool_dir: Path = Field(Path(".data/spool"), description=(
        "Durable spool for batches the database cannot take; each collector uses "
        "<dir>/<venue>-<currency> and locks it."))
    spool_max_bytes: int = Field(2 * 2**30, gt=0, description="Spool size cap in bytes (default 2 GiB).")

    @model_validator(mode="after")
    def _connection_budget(self) -> "Settings":
        # Deribit counts WebSockets and HTTP requests together, at most 32 per IP (reference A.4).
        # REST runs in two clients at once: the universe refresh and a gap recovery.
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("TICKVAULT_BACKOFF_MAX_S must be >= TICKVAULT_BACKOFF_MIN_S")
        used = self.max_connections + 2 * self.rest_max_concurrency
        if used > DERIBIT_CONNECTIONS_PER_IP:
            raise ValueError(
                f"TICKVAULT_MAX_CONNECTIONS + 2 x TICKVAULT_REST_MAX_CONCURRENCY = {used} exceeds "
                f"Deribit's {DERIBIT_CONNECTIONS_PER_IP} connections per IP")
        return self

    @field_validator("top_n", mode="before")
    @classmethod
    def _top_n(cls, value: object) -> object:
        if value in ("", "all", "ALL", None):
            return None
        return value

    @field_validator("currency", "kind")
    @classmethod
    def _csv(cls, value: str) -> str:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise ValueError("must name at least one value")
        return ",".join(items)

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str) -> str:
        try:
            k, n = (int(x) for x in value.split("/"))
        except ValueError:
            raise ValueError("must be k/n, e.g. 2/4") from None
        if not 1 <= k <= n:
            raise ValueError("needs 1 <= k <= n")
        return f"{k}/{n}"

    @property
    def currencies(self) -> tuple[str, ...]:
        """``currency`` split: ``("ETH", "BTC")``."""
        return tuple(self.currency.split(","))

    @property
    def kinds(self) -> tuple[str, ...]:
        """``kind`` split: ``("option", "future")``."""
        return tuple(self.kind.split(","))

    @property
    def shard_index(self) -> tuple[int, int]:
        """``shard`` as (k, n), 1 <= k <= n."""
        k, n = self.shard.split("/")
        return int(k), int(n)

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value


def load_settings(**overrides: object) -> Settings:
    """Read the settings, applying ``overrides`` (CLI flags) on top of the environment.

    Raises:
        SettingsError: naming every ``TICKVAULT_*`` variable that is missing or invalid.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["loc"]:
                problems.append(f"TICKVAULT_{str(err['loc'][0]).upper()}: {err['msg']}")
            else:  # a check across variables names them in its message
                problems.append(str(err["msg"]).removeprefix("Value error, "))
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
