"""Configuration of the collector, read from the environment (prefix ``TICKVAULT_``) or a ``.env``
file by pydantic-settings. Every variable is documented in the README's configuration table.

Two layers: :class:`Settings` holds what every collector has (database, batching, backoff,
sharding, metrics, spool); the venue named by ``TICKVAULT_VENUE`` brings its own settings model
(``TICKVAULT_<VENUE>_*``: endpoints, universe, heartbeats, staleness limits), loaded by
:func:`load_settings` into :attr:`Settings.venue_settings`.

A missing or invalid value fails at start with the variable's name (``SettingsError``); nothing
has a default password, and the database URL has no default at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """A configuration variable is missing or invalid; the message names the variable."""


class RestBudgetSettings(BaseSettings):
    """How REST clients share an exchange's per-IP request limit
    (:mod:`collector_daemon.core.rest_budget`); part of :class:`Settings`, and read alone by
    the Dagster runs (backfill, reconciliation, universe), which have no collector settings."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_", env_file=".env", extra="ignore")

    rest_budget_shared: bool = Field(True, description=(
        "Pace REST requests with a token bucket kept in the database, shared by every process "
        "of this host (collector, workers, Dagster runs) calling the same exchange, for venues "
        "with a per-IP limit (Bybit); false = each client paces itself alone."))
    rest_budget_key: str | None = Field(None, description=(
        "Name of the shared budget; default '<venue> <REST host>'. Processes that reach the "
        "exchange from different IPs (hosts) set different keys; the same IP, the same key."))


class Settings(RestBudgetSettings):
    """Collector settings. Field ``x`` is read from ``TICKVAULT_X``."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_", env_file=".env", extra="ignore")

    database_url: SecretStr = Field(
        description="PostgreSQL/TimescaleDB URL, e.g. postgresql://user:pw@host:5432/tickvault. Required.")
    venue: str = Field("deribit", description=(
        "Exchange to collect from: a registered venue (collector_daemon/venues/<name>/)."))
    shard: str = Field("1/1", description=(
        "k/n: this daemon owns the instruments whose name hashes to shard k of n (scale-out; "
        "every shard also takes the chain-wide trades channels, deduplicated by the database)."))
    workers: int = Field(1, ge=1, le=64, description=(
        "Collector processes of this daemon (``--workers``), each owning a disjoint part of its "
        "shard (worker i of N: shard k+n(i-1) of nN) under one supervisor: one /metrics summing "
        "theirs, one spool each, status rows <collector_id>/worker<i>; the connection and REST "
        "budgets below are divided among them."))
    channels_per_connection: int = Field(500, ge=1, le=5000, description=(
        "Channels per WebSocket connection; the subscription set is spread over "
        "ceil(channels / this) connections (at most max_connections)."))
    max_connections: int = Field(16, ge=1, le=28, description=(
        "Most WebSocket connections per daemon and endpoint (checked at start against the "
        "venue's connections per IP; Deribit counts REST too: this + 2 x "
        "TICKVAULT_REST_MAX_CONCURRENCY must stay within 32)."))
    failover_s: float = Field(30.0, gt=0, description=(
        "A connection down this long hands its channels to the other connections (s)."))
    universe_refresh_s: float = Field(300.0, gt=0, description=(
        "Seconds between re-reads of the universe table (a NOTIFY from Dagster is acted on at once)."))
    universe_stale_s: float = Field(5400.0, gt=0, description=(
        "Refresh the universe from REST itself when nobody (Dagster's hourly instrument_universe) "
        "refreshed the table for this long (s); REST is otherwise used only while the table is empty."))
    batch_rows: int = Field(5_000, ge=1, description="Rows per COPY batch.")
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
    accounts_refresh_s: float = Field(60.0, gt=0, description=(
        "Re-read the accounts table at least this often (s); changes also arrive by NOTIFY."))
    silence_reconnect_s: float = Field(30.0, gt=0, description=(
        "Reconnect when no frame at all (data or heartbeat) arrived for this long (s)."))
    rest_max_concurrency: int = Field(4, ge=1, le=16, description=(
        "Concurrent REST requests per client (the universe refresh and a gap recovery may run at "
        "once; on Deribit each request counts toward its 32 connections per IP)."))
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

    _venue_settings: object = PrivateAttr(None)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> "Settings":
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("TICKVAULT_BACKOFF_MAX_S must be >= TICKVAULT_BACKOFF_MIN_S")
        return self

    @property
    def venue_settings(self):
        """The venue's own settings (a ``collector_daemon.venues.VenueSettings``), set by
        :func:`load_settings`."""
        return self._venue_settings

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
    def shard_index(self) -> tuple[int, int]:
        """``shard`` as (k, n), 1 <= k <= n."""
        k, n = self.shard.split("/")
        return int(k), int(n)

    def per_worker(self) -> tuple[int, int]:
        """``(max_connections, rest_max_concurrency)`` of each of the ``workers`` processes: the
        daemon's budgets divided among them (at least 1 each)."""
        return (max(1, self.max_connections // self.workers),
                max(1, self.rest_max_concurrency // self.workers))

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


def secrets_from_files(environ: "os._Environ[str] | dict[str, str] | None" = None) -> list[str]:
    """Docker/Kubernetes secrets: for every ``TICKVAULT_<NAME>_FILE`` variable whose
    ``TICKVAULT_<NAME>`` is unset, read the file (one trailing newline stripped) into
    ``TICKVAULT_<NAME>``, so the secret never has to be in the environment or a compose file
    (e.g. ``TICKVAULT_DATABASE_URL_FILE=/run/secrets/database_url``). Returns the variables set.

    Raises:
        SettingsError: a ``*_FILE`` variable names a file that cannot be read (the message names
            the variable and the path, never the content).
    """
    env = os.environ if environ is None else environ
    done = []
    for name, path in list(env.items()):
        if not (name.startswith("TICKVAULT_") and name.endswith("_FILE")) or not path:
            continue
        target = name.removesuffix("_FILE")
        if env.get(target):
            continue
        try:
            value = Path(path).read_text()
        except OSError as exc:
            raise SettingsError(f"invalid configuration: {name}: cannot read {path} "
                                f"({exc.strerror or type(exc).__name__})") from None
        env[target] = value[:-1] if value.endswith("\n") else value
        done.append(target)
    return done


def load_settings(**overrides: object) -> Settings:
    """Read the settings and the venue's (``TICKVAULT_VENUE``) settings, applying ``overrides``
    (CLI flags, tests) on top of the environment. An override that is no collector setting goes
    to the venue's settings, with or without the venue's prefix (``history_url`` or
    ``deribit_history_url``).

    Secrets may come from files (:func:`secrets_from_files`: ``TICKVAULT_<NAME>_FILE``).

    Raises:
        SettingsError: naming every variable that is missing or invalid, an unknown venue (with
            the known ones), an unknown override, an unreadable ``*_FILE``, or a check across
            variables that fails (e.g. the venue's connections per IP).
    """
    from collector_daemon.venues import UnknownVenue, get_venue
    secrets_from_files()
    given = {k: v for k, v in overrides.items() if v is not None}
    core = {k: v for k, v in given.items() if k in Settings.model_fields}
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = Settings(**core)
    except ValidationError as exc:
        problems += _problems(exc, lambda field: f"TICKVAULT_{field.upper()}")
    venue_name = settings.venue if settings is not None else str(core.get("venue", "deribit"))
    try:
        venue = get_venue(venue_name)
    except UnknownVenue as exc:
        raise SettingsError(f"invalid configuration: TICKVAULT_VENUE: {exc}") from None
    prefix = f"{venue.name}_"
    fields = venue.settings_class.model_fields
    rest = {}
    for key, value in given.items():
        if key in core:
            continue
        name = key.removeprefix(prefix) if key.removeprefix(prefix) in fields else key
        if name not in fields:
            raise SettingsError(f"invalid configuration: unknown setting {key!r} (venue {venue.name})")
        rest[name] = value
    venue_settings = None
    try:
        venue_settings = venue.load_settings(**rest)
    except ValidationError as exc:
        problems += _problems(exc, lambda loc: _venue_variables(venue, loc))
    if problems:
        raise SettingsError("invalid configuration: " + "; ".join(problems))
    limit = venue.limits.connections_per_ip
    if limit is not None:
        sockets, rest = settings.per_worker()
        used = settings.workers * (sockets + (2 * rest if venue.limits.rest_counts_as_connection else 0))
        if used > limit:
            what = ("TICKVAULT_MAX_CONNECTIONS + 2 x TICKVAULT_REST_MAX_CONCURRENCY"
                    if venue.limits.rest_counts_as_connection else "TICKVAULT_MAX_CONNECTIONS")
            if settings.workers > 1:
                what = f"TICKVAULT_WORKERS ({settings.workers}) x each worker's share of ({what})"
            raise SettingsError(f"invalid configuration: {what} = {used} exceeds "
                                f"{venue.name.capitalize()}'s {limit} connections per IP")
    settings._venue_settings = venue_settings
    return settings


def _venue_variables(venue, loc: str) -> str:
    """The variables a venue setting is read from: ``TICKVAULT_DERIBIT_HEARTBEAT_S (or
    TICKVAULT_HEARTBEAT_S)``; ``loc`` is its field name or the alias that was read."""
    prefix = venue.settings_class.model_config.get("env_prefix", "")
    field = loc.lower().removeprefix(prefix.lower()).removeprefix("tickvault_")
    info = venue.settings_class.model_fields.get(field)
    names = [f"{prefix}{field}".upper()]
    alias = getattr(info, "validation_alias", None) if info is not None else None
    for choice in getattr(alias, "choices", ()):
        if isinstance(choice, str) and choice.upper() not in names and choice.startswith("TICKVAULT_"):
            names.append(choice.upper())
    return names[0] + (f" (or {', '.join(names[1:])})" if len(names) > 1 else "")


def _problems(exc: ValidationError, variable) -> list[str]:
    """One ``VARIABLE: message`` per error; ``variable(loc)`` names the variable of a location
    (a field name, or the alias that was read)."""
    out = []
    for err in exc.errors():
        if err["loc"]:
            out.append(f"{variable(str(err['loc'][0]))}: {err['msg']}")
        else:  # a check across variables names them in its message
            out.append(str(err["msg"]).removeprefix("Value error, "))
    return out
