"""Bybit v5 as a :class:`~collector_daemon.venues.Venue`: settings, limits, streams and recovery.

Facts (../shared/reference/exchange-apis-and-peers.md B): one public WebSocket endpoint per
category; at most 500 new connections per 5 minutes per domain and 1,000 market-data connections
per IP and market; ticker data has no REST history; ``/v5/market/recent-trade`` returns only the
latest 1,000 trades of a symbol (spot 60; options per symbol or base coin), with no time or cursor
parameter, so a lost window is recoverable only as far back as those trades reach.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import httpx
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from collector_daemon.core.accounts import Account
from collector_daemon.core.rest_budget import RequestRate
from collector_daemon.rows import TableSpec
from collector_daemon.venues import (
    ConnectionLimits, Recovery, RecoveryIncomplete, RecoveryPlan, StreamSpec, Venue, VenueSettings,
)
from collector_daemon.venues.bybit import messages as m
from collector_daemon.venues.bybit.private import (
    EXECUTIONS, ORDERS, POSITIONS, PRIVATE_TOPICS, PRIVATE_URL, WALLET, BybitPrivateProtocol,
)
from collector_daemon.venues.bybit.protocol import CHANNEL_STREAMS, BybitProtocol, topic_of
from collector_daemon.venues.bybit.reconcile import reconcile
from collector_daemon.venues.bybit.rest import RECENT_TRADES_LIMIT, BybitRest, BybitRestError
from collector_daemon.venues.bybit.universe import Universe, fetch_universe


#: Recovery windows are widened by this much on each side (µs): a lost window is bounded by
#: message times (tickers' ``ts``), while a trade is stored at its fill time ``T``, which precedes
#: the push of its message; rows already stored are skipped by the natural key.
WINDOW_MARGIN_US = 2_000_000


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


class BybitSettings(VenueSettings):
    """Bybit's settings: ``TICKVAULT_BYBIT_*``. ``top_n`` (shared by every venue) is not used:
    Bybit ranks per category (``linear_top_n``, ``option_top_n``)."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_BYBIT_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    categories: str = Field("linear,option", description=(
        "Categories collected, comma-separated: linear, option, spot."))
    linear_symbols: str = Field("BTCUSDT,ETHUSDT", description=(
        "Linear symbols collected (comma-separated), unless linear_top_n is set."))
    linear_top_n: int | None = Field(None, ge=1, description=(
        "Collect the top N linear symbols by 24 h turnover instead of linear_symbols; empty = off."))
    spot_symbols: str = Field("BTCUSDT,ETHUSDT", description="Spot symbols collected (with category spot).")
    option_base_coins: str = Field("ETH,BTC", description="Option base coins collected (comma-separated).")
    option_top_n: int | None = Field(50, ge=1, description=(
        "Keep the top N options per base coin by open interest; empty or 'all' = every option."))
    linear_ws_url: str = Field("wss://stream.bybit.com/v5/public/linear", description="Linear endpoint.")
    option_ws_url: str = Field("wss://stream.bybit.com/v5/public/option", description="Option endpoint.")
    spot_ws_url: str = Field("wss://stream.bybit.com/v5/public/spot", description="Spot endpoint.")
    rest_url: str = Field("https://api.bybit.com", description="REST base URL (v5).")
    rest_requests_per_5s: int = Field(400, ge=2, le=600, description=(
        "REST requests per 5 s that every process of this IP together may start (Bybit's limit: "
        "600 per 5 s per IP, HTTP 403 and a 10-minute ban beyond). Two thirds of it: the IP may "
        "carry other software's requests (the accounts' own trading), Bybit counts arrivals "
        "while we count starts (network jitter bunches them), and a ban stops all REST for 10 "
        "minutes, while 80 requests per second already reconcile 100 accounts in under a minute."))
    rest_ban_wait_s: float = Field(600.0, gt=0, description=(
        "Wait after an HTTP 403 (Bybit bans the IP for >= 10 minutes) before trying again (s)."))
    tickers_stale_warn_s: float = Field(60.0, gt=0, description="Warn when no ticker arrived for this long (s).")
    tickers_stale_reconnect_s: float = Field(600.0, gt=0, description=(
        "Reconnect when no ticker arrived for this long (s)."))
    trades_stale_warn_s: float = Field(3600.0, gt=0, description=(
        "Warn when no trade arrived for this long (s); trades never force a reconnect."))
    private: bool = Field(True, description=(
        "Record the private streams of the enabled accounts in the accounts table."))
    private_ws_url: str = Field(PRIVATE_URL, description="Private endpoint (one connection per account).")
    private_topics: str = Field(",".join(PRIVATE_TOPICS), description=(
        "Private topics recorded, comma-separated: execution, order, position, wallet."))
    private_categories: str = Field("linear,option", description=(
        "Categories reconciled over REST, comma-separated: linear, option, spot, inverse."))
    reconcile_lookback_days: float = Field(7.0, gt=0, le=730, description=(
        "At start, reconcile executions and orders this far back (days; Bybit keeps 2 years)."))

    @field_validator("linear_top_n", "option_top_n", mode="before")
    @classmethod
    def _top_n(cls, value: object) -> object:
        return None if value in ("", "all", "ALL", None) else value

    @field_validator("private_topics")
    @classmethod
    def _private_topics(cls, value: str) -> str:
        items = _csv(value)
        bad = [t for t in items if t not in PRIVATE_TOPICS]
        if not items or bad:
            raise ValueError(f"must name topics among {', '.join(PRIVATE_TOPICS)}; got {value!r}")
        return ",".join(items)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: str) -> str:
        items = _csv(value)
        bad = [c for c in items if c not in m.CATEGORIES]
        if not items or bad:
            raise ValueError(f"must name categories among {', '.join(m.CATEGORIES)}; got {value!r}")
        return ",".join(items)

    @field_validator("linear_symbols", "spot_symbols", "option_base_coins")
    @classmethod
    def _symbols(cls, value: str) -> str:
        return ",".join(s.upper() for s in _csv(value))

    @property
    def category_list(self) -> tuple[str, ...]:
        """``categories`` split."""
        return _csv(self.categories)

    @property
    def linear_symbol_list(self) -> tuple[str, ...]:
        return _csv(self.linear_symbols)

    @property
    def spot_symbol_list(self) -> tuple[str, ...]:
        return _csv(self.spot_symbols)

    @property
    def base_coins(self) -> tuple[str, ...]:
        """Option base coins (empty without category option)."""
        return _csv(self.option_base_coins) if "option" in self.category_list else ()

    def universe_groups(self) -> tuple[str, ...]:
        """``linear``, ``spot`` and one group per option base coin, as configured."""
        cats = self.category_list
        return tuple(g for g in ("linear", "spot") if g in cats) + self.base_coins


class BybitVenue(Venue):
    """Bybit v5 public data: tickers (``bybit_tickers``, not recoverable) and trades
    (``bybit_trades``, recoverable by time window from recent-trade, as far back as it reaches)."""

    name = m.VENUE
    settings_class = BybitSettings
    limits = ConnectionLimits(connections_per_ip=1000, subscribe_burst=10, subscribe_period_s=1.0)
    channel_streams = CHANNEL_STREAMS
    rest_errors = (BybitRestError, httpx.HTTPError)
    schema_dir = Path(__file__).parent / "schema"
    #: /v5/execution/list restores every execution; position/list and wallet-balance the current
    #: state (each row a snapshot, so the state after the window is complete again);
    #: /v5/order/history only each order's latest state.
    private_streams = {
        "executions": "", "positions": "", "wallet": "",
        "orders": ("Bybit's /v5/order/history returns each order's latest state only: the "
                   "intermediate order updates of the window (New, PartiallyFilled, ...) are lost"),
    }
    #: /v5/execution/list and /v5/order/history page any past 7-day window; position/list and
    #: wallet-balance answer with the current state only.
    private_history_streams = frozenset({"executions", "orders"})
    #: Trades of one millisecond: by cross sequence (``seq``), then trade id.
    trade_order = ("cross_seq", "trade_id")
    export_tables = tuple(t.name for t in (m.TICKERS, m.TRADES, EXECUTIONS, ORDERS, POSITIONS,
                                           WALLET))

    def streams(self, settings: BybitSettings) -> tuple[StreamSpec, ...]:
        return (
            StreamSpec("tickers", m.TICKERS, Recovery.NONE, unrecoverable_reason=(
                "tickers cannot be recovered: Bybit serves no history of ticker data"),
                stale_warn_s=settings.tickers_stale_warn_s,
                stale_reconnect_s=settings.tickers_stale_reconnect_s, per_instrument=True),
            StreamSpec("trades", m.TRADES, Recovery.TIME, stale_warn_s=settings.trades_stale_warn_s),
        )

    def channel_instrument(self, channel: str) -> str | None:
        """``tickers.{symbol}`` -> the instrument name (spot: ``{symbol}-SPOT``); per-symbol
        ``publicTrade`` channels too; options' ``publicTrade.{coin}`` is chain-wide (None)."""
        topic = topic_of(channel)
        kind, _, symbol = topic.partition(".")
        if channel != topic:
            return m.instrument_name("spot", symbol)
        if kind == "tickers" or "-" in symbol or symbol.endswith(("USDT", "USDC", "PERP")):
            return symbol
        return None   # publicTrade.{baseCoin}: every option of the coin

    def ws_endpoints(self, settings: BybitSettings) -> dict[str, str]:
        urls = {"linear": settings.linear_ws_url, "option": settings.option_ws_url,
                "spot": settings.spot_ws_url}
        return {c: urls[c] for c in settings.category_list}

    def protocol(self, settings: BybitSettings) -> BybitProtocol:
        return BybitProtocol(settings.category_list, settings.base_coins)

    def rest_client(self, settings: BybitSettings, *, base_url: str | None = None,
                    max_concurrency: int = 4) -> BybitRest:
        return BybitRest(base_url or settings.rest_url, max_concurrency=max_concurrency,
                         ban_wait_s=settings.rest_ban_wait_s, requests_per_5s=settings.rest_requests_per_5s)

    def request_budget(self, settings: BybitSettings) -> RequestRate:
        """``rest_requests_per_5s`` per 5 s (Bybit: 600 per 5 s per IP, ``docs/v5/rate-limit``)."""
        return RequestRate(settings.rest_requests_per_5s, 5.0)

    async def fetch_universe(self, rest: BybitRest, settings: BybitSettings, group: str) -> Universe:
        return await fetch_universe(rest, settings, group)

    def universe_kinds(self, settings: BybitSettings) -> tuple[str, ...]:
        return settings.category_list

    async def _trade_targets(self, rest: BybitRest, settings: BybitSettings) -> list[tuple[str, str | None, str | None]]:
        """(category, symbol, base coin) of every recent-trade request covering all subscribed trades."""
        out: list[tuple[str, str | None, str | None]] = []
        cats = settings.category_list
        if "linear" in cats:
            names = (settings.linear_symbol_list if settings.linear_top_n is None
                     else (await fetch_universe(rest, settings, "linear")).selected)
            out += [("linear", s, None) for s in names]
        if "spot" in cats:
            out += [("spot", s, None) for s in settings.spot_symbol_list]
        out += [("option", None, coin) for coin in settings.base_coins]
        return out

    async def recovery_pages(self, rest: BybitRest, gap, plan: RecoveryPlan, settings: BybitSettings,
                             instrument_groups: Mapping[str, tuple[str, str]]) -> AsyncIterator[list[tuple]]:
        """Trades of the gap's window (widened by :data:`WINDOW_MARGIN_US`) from
        ``/v5/market/recent-trade`` (per symbol; options per symbol or base coin). Where the latest trades Bybit serves do not reach back to the
        window's start, what they cover is stored and :class:`RecoveryIncomplete` is raised at
        the end naming the uncovered part (the gap becomes ``unrecoverable``).

        Raises:
            BybitRestError: a call failed, or an answer holds a malformed trade.
            RecoveryIncomplete: part of the window is older than what recent-trade returns.
        """
        start_us, end_us = gap.gap_start - WINDOW_MARGIN_US, gap.gap_end + WINDOW_MARGIN_US
        if gap.instrument_name == "*":
            targets = await self._trade_targets(rest, settings)
        else:
            category, symbol = m.symbol_of(gap.instrument_name)
            targets = [(category, symbol, None)]
        uncovered = []
        for category, symbol, coin in targets:
            trades = await rest.recent_trades(category, symbol=symbol, base_coin=coin)
            now_us = time.time_ns() // 1000
            try:
                rows = [m.trade_row(category, t, now_us, "rest") for t in trades]
            except m.BadValue as exc:
                raise BybitRestError("market/recent-trade", 200, f"malformed trade: {exc}") from None
            yield [r for r in rows if start_us <= r[4] <= end_us
                   and (gap.instrument_name == "*" or r[2] == gap.instrument_name)]
            if len(trades) >= RECENT_TRADES_LIMIT.get(category, 1000):
                oldest = min(r[4] for r in rows)
                if oldest >= start_us:   # trades at or before `oldest` may be missing
                    uncovered.append(f"{symbol or coin} ({category}) before {_iso(oldest)}")
        if uncovered:
            raise RecoveryIncomplete(
                f"recent-trade returned its maximum of latest trades, which do not reach back to the "
                f"window start {_iso(start_us)} for: {'; '.join(uncovered[:20])}"
                f"{' ...' if len(uncovered) > 20 else ''}; Bybit offers no paged trade history "
                "(archives: bybit.com/en/derivative-activity/history-data)")

    def private_ws_url(self, settings: BybitSettings) -> str | None:
        return settings.private_ws_url if settings.private else None

    def private_protocol(self, settings: BybitSettings, account: Account) -> BybitPrivateProtocol:
        return BybitPrivateProtocol(account, _csv(settings.private_topics))

    def reconcile_account(self, rest: BybitRest, settings: BybitSettings, account: Account,
                          since_us: int | None, until_us: int | None = None,
                          ) -> AsyncIterator[tuple[TableSpec, list[tuple]]]:
        """:func:`collector_daemon.venues.bybit.reconcile.reconcile` over ``[since_us, until_us)``
        (since None: ``reconcile_lookback_days`` ago)."""
        if since_us is None:
            since_us = time.time_ns() // 1000 - int(settings.reconcile_lookback_days * 86_400e6)
        return reconcile(rest, account, since_us, until_us, categories=_csv(settings.private_categories),
                         option_base_coins=_csv(settings.option_base_coins))

    def emulation(self, fanout: int = 1, churn: bool = False):
        from collector_daemon.venues.bybit.emulation import BybitEmulation
        return BybitEmulation(fanout=fanout, churn=churn)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="milliseconds")


VENUE = BybitVenue()
