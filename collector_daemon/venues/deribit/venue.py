"""Deribit as a :class:`~collector_daemon.venues.Venue`: settings, limits, streams and recovery.

Facts (../shared/reference/exchange-apis-and-peers.md A.1-A.5): 32 connections per IP, WebSockets
and HTTP requests together; subscribe credits burst 10, refill ~3.3/s; ``public/set_heartbeat``
>= 10 s; ticker data has no REST history; ``get_last_trades_by_currency_and_time`` serves the
last 24 h only (older windows need history.deribit.com); trade_seq rises by 1 per instrument.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping

import httpx
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from collector_daemon.rows import QUOTES, TRADES
from collector_daemon.venues import (
    ConnectionLimits, Recovery, RecoveryPlan, StreamSpec, Venue, VenueSettings,
)
from collector_daemon.venues.deribit import messages as m
from collector_daemon.venues.deribit.protocol import CHANNEL_STREAMS, DeribitProtocol
from collector_daemon.venues.deribit.rest import DeribitRest, DeribitRestError
from collector_daemon.venues.deribit.universe import Universe, fetch_universe


def _env(name: str) -> AliasChoices:
    """``TICKVAULT_DERIBIT_<NAME>``, or the older ``TICKVAULT_<NAME>`` (same meaning)."""
    return AliasChoices(f"TICKVAULT_DERIBIT_{name}", f"TICKVAULT_{name}", name.lower())


class DeribitSettings(VenueSettings):
    """Deribit's settings: ``TICKVAULT_DERIBIT_*`` (the currency, kind, top N, heartbeat and
    staleness variables are also read without ``DERIBIT_``, their names before venues existed)."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_DERIBIT_", env_file=".env",
                                      extra="ignore", populate_by_name=True)

    ws_url: str = Field("wss://www.deribit.com/ws/api/v2", description="Deribit WebSocket endpoint.")
    rest_url: str = Field("https://www.deribit.com/api/v2", description="Deribit REST base URL.")
    history_url: str | None = Field(None, description=(
        "Archive REST host for trade windows older than 24 h (e.g. https://history.deribit.com/api/v2); "
        "empty = such windows are left to the Dagster backfill."))
    currency: str = Field("ETH", validation_alias=_env("CURRENCY"),
                          description="Currencies collected, comma-separated (ETH or ETH,BTC).")
    kind: str = Field("option", validation_alias=_env("KIND"),
                      description="Instrument kinds collected, comma-separated (option or option,future).")
    top_n: int | None = Field(50, validation_alias=_env("TOP_N"), description=(
        "Keep the top N instruments by open interest; empty or 'all' = the whole chain."))
    heartbeat_s: int = Field(10, ge=10, validation_alias=_env("HEARTBEAT_S"),
                             description="public/set_heartbeat interval (s, Deribit's minimum is 10).")
    quotes_stale_warn_s: float = Field(60.0, gt=0, validation_alias=_env("QUOTES_STALE_WARN_S"),
                                       description="Warn when no ticker arrived for this long (s).")
    quotes_stale_reconnect_s: float = Field(600.0, gt=0, validation_alias=_env("QUOTES_STALE_RECONNECT_S"),
                                            description="Reconnect when no ticker arrived for this long (s).")
    trades_stale_warn_s: float = Field(3600.0, gt=0, validation_alias=_env("TRADES_STALE_WARN_S"), description=(
        "Warn when no trade arrived for this long (s); trades never force a reconnect (quiet nights)."))

    @field_validator("top_n", mode="before")
    @classmethod
    def _top_n(cls, value: object) -> object:
        return None if value in ("", "all", "ALL", None) else value

    @field_validator("history_url", mode="before")
    @classmethod
    def _history_url(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("currency", "kind")
    @classmethod
    def _csv(cls, value: str) -> str:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise ValueError("must name at least one value")
        return ",".join(items)

    @property
    def currencies(self) -> tuple[str, ...]:
        """``currency`` split: ``("ETH", "BTC")``."""
        return tuple(self.currency.split(","))

    @property
    def kinds(self) -> tuple[str, ...]:
        """``kind`` split: ``("option", "future")``."""
        return tuple(self.kind.split(","))

    def universe_groups(self) -> tuple[str, ...]:
        """One universe per currency."""
        return self.currencies


class DeribitVenue(Venue):
    """Deribit API v2: per-instrument tickers (``quotes``, not recoverable) and chain-wide trades
    per currency and kind (``trades``, recoverable by trade_seq range and by time window)."""

    name = m.VENUE
    settings_class = DeribitSettings
    limits = ConnectionLimits(connections_per_ip=32, rest_counts_as_connection=True,
                              subscribe_burst=10, subscribe_period_s=3.0)
    channel_streams = CHANNEL_STREAMS
    rest_errors = (DeribitRestError, httpx.HTTPError)
    recent_horizon_s = 24 * 3600.0

    def streams(self, settings: DeribitSettings) -> tuple[StreamSpec, ...]:
        return (
            StreamSpec("quotes", QUOTES, Recovery.NONE, unrecoverable_reason=(
                "quotes cannot be recovered: Deribit serves no REST history of ticker data"),
                stale_warn_s=settings.quotes_stale_warn_s,
                stale_reconnect_s=settings.quotes_stale_reconnect_s, per_instrument=True),
            StreamSpec("trades", TRADES, Recovery.SEQUENCE, sequence_column="trade_seq",
                       stale_warn_s=settings.trades_stale_warn_s),
        )

    def channel_instrument(self, channel: str) -> str | None:
        """``ticker.{instrument_name}.{interval}`` -> the instrument name."""
        if channel.startswith("ticker."):
            parts = channel.split(".")
            return parts[1] if len(parts) >= 3 else None
        return None

    def ws_endpoints(self, settings: DeribitSettings) -> dict[str, str]:
        return {"public": settings.ws_url}

    def protocol(self, settings: DeribitSettings) -> DeribitProtocol:
        return DeribitProtocol(settings.currencies, settings.kinds, heartbeat_s=settings.heartbeat_s)

    def rest_client(self, settings: DeribitSettings, *, base_url: str | None = None,
                    max_concurrency: int = 4) -> DeribitRest:
        return DeribitRest(base_url or settings.rest_url, max_concurrency=max_concurrency)

    async def fetch_universe(self, rest: DeribitRest, settings: DeribitSettings, group: str) -> Universe:
        return await fetch_universe(rest, group, settings.kinds, top_n=settings.top_n)

    def universe_kinds(self, settings: DeribitSettings) -> tuple[str, ...]:
        return settings.kinds

    def horizon_reason(self) -> str:
        return ("window older than 24 h: get_last_trades_by_currency_and_time serves only the "
                "last 24 h and no history host is configured")

    async def recovery_pages(self, rest: DeribitRest, gap, plan: RecoveryPlan,
                             settings: DeribitSettings,
                             instrument_groups: Mapping[str, tuple[str, str]]) -> AsyncIterator[list[tuple]]:
        """Trades by trade_seq range (``get_last_trades_by_instrument``) or by currency, kind and
        time window (``get_last_trades_by_currency_and_time``), limited to the gap."""
        if plan.method == "seq":
            lo, hi = gap.seq_from, gap.seq_to
            async for page in rest.trades_by_seq(gap.instrument_name, lo, hi):
                now_us = time.time_ns() // 1000
                yield [t.to_row(now_us, "rest") for t in page
                       if t.trade_seq is not None and lo <= t.trade_seq <= hi]
            return
        start_ms, end_ms = gap.gap_start // 1000, math.ceil(gap.gap_end / 1000)
        if gap.instrument_name == "*":
            targets = [(c, k) for c in settings.currencies for k in settings.kinds]
        else:
            targets = [instrument_groups.get(gap.instrument_name,
                                             (gap.instrument_name.split("-")[0], settings.kinds[0]))]
        for currency, kind in targets:
            async for page in rest.trades_by_time(currency, start_ms, end_ms, kind=kind):
                now_us = time.time_ns() // 1000
                yield [t.to_row(now_us, "rest") for t in page
                       if start_ms <= t.timestamp <= end_ms
                       and (gap.instrument_name == "*" or t.instrument_name == gap.instrument_name)]

    async def open_interest(self, rest: DeribitRest, settings: DeribitSettings) -> dict[str, float]:
        """``public/get_book_summary_by_currency`` per currency and kind (options: base coin)."""
        rows = []
        for currency in settings.currencies:
            for kind in settings.kinds:
                rows += await rest.get_book_summary_by_currency(currency, kind=kind)
        return {r.instrument_name: r.open_interest for r in rows if r.open_interest is not None}

    def emulation(self, fanout: int = 1, churn: bool = False):
        from collector_daemon.venues.deribit.emulation import EMULATION
        return EMULATION(fanout=fanout, churn=churn)


VENUE = DeribitVenue()
