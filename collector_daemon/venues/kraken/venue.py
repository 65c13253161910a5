"""Kraken spot as a :class:`~collector_daemon.venues.Venue`: settings, limits, streams, universe
and gap recovery.

Facts (../shared/reference/exchange-apis-and-peers.md C): WS v2 at ``wss://ws.kraken.com/v2``;
Cloudflare allows about 150 reconnects per 10 minutes per IP (``connects_per_period``), no faster
than every 5 s during maintenance (``KrakenProtocol.min_reconnect_delay_s``); trade ids rise by
exactly 1 per pair, so a hole is a gap with exact bounds (``Recovery.SEQUENCE`` on
``trade_seq`` = the trade id); REST ``Trades`` pages by a ``since`` cursor (ns) through a pair's
whole history, so every gap (hole or disconnect window, at any age) is recoverable.

On start the gap detector is seeded with the last stored trade id of each pair; the first live
trade then opens the gap from there to now, which the recovery fetches by cursor while the
stream goes on (the "sync from the last stored trade" of the system this replaces).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from collector_daemon.rows import EXCHANGE_CANDLES, TRADES, TableSpec
from collector_daemon.venues import (
    ConnectionLimits, Recovery, RecoveryPlan, StreamSpec, Venue, VenueSettings,
)
from collector_daemon.venues.kraken import messages as m
from collector_daemon.venues.kraken.protocol import CHANNEL_STREAMS, KrakenProtocol, split_channel
from collector_daemon.venues.kraken.rest import OHLC_LIMIT, KrakenRest, KrakenRestError

log = logging.getLogger(__name__)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


class KrakenSettings(VenueSettings):
    """Kraken's settings: ``TICKVAULT_KRAKEN_*``."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_KRAKEN_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    pairs: str = Field("BTC/USD,ETH/USD", description=(
        "Pairs collected, WS v2 symbols, comma-separated; mapped to REST names via AssetPairs."))
    ohlc_intervals: str = Field("1", description=(
        "ohlc intervals subscribed per pair (minutes, comma-separated, among "
        "1,5,15,30,60,240,1440,10080,21600); empty = none."))
    ws_url: str = Field("wss://ws.kraken.com/v2", description="WebSocket v2 endpoint.")
    rest_url: str = Field("https://api.kraken.com", description="REST base URL.")
    rest_pair_interval_s: float = Field(1.0, ge=0, description=(
        "Least time between two Trades/OHLC calls of one pair (s); Kraken limits per IP and pair."))
    trades_stale_warn_s: float = Field(3600.0, gt=0, description=(
        "Warn when no trade arrived for this long (s); trades never force a reconnect."))

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: str) -> str:
        items = _csv(value.upper())
        bad = [p for p in items if p.count("/") != 1]
        if not items or bad:
            raise ValueError(f"must list WS v2 pairs like BTC/USD; got {value!r}")
        return ",".join(items)

    @field_validator("ohlc_intervals")
    @classmethod
    def _intervals(cls, value: str) -> str:
        try:
            items = tuple(int(v) for v in _csv(value))
        except ValueError:
            raise ValueError(f"must list minutes among {m.OHLC_INTERVALS}; got {value!r}") from None
        if any(i not in m.OHLC_INTERVALS for i in items):
            raise ValueError(f"must list minutes among {m.OHLC_INTERVALS}; got {value!r}")
        return ",".join(map(str, items))

    @property
    def pair_list(self) -> tuple[str, ...]:
        """``pairs`` split (``("BTC/USD", "ETH/USD")``)."""
        return _csv(self.pairs)

    @property
    def interval_list(self) -> tuple[int, ...]:
        """``ohlc_intervals`` as integers."""
        return tuple(int(v) for v in _csv(self.ohlc_intervals))


@dataclass(frozen=True)
class Universe:
    """The configured pairs that AssetPairs lists.

    Attributes:
        pairs: v2 symbol -> its AssetPairs entry (with ``rest_name``, the REST pair key).
        selected: the v2 symbols subscribed (configured order).
    """

    pairs: dict[str, dict]
    selected: list[str]
    open_interest: dict[str, float]

    def instrument_rows(self) -> list[tuple]:
        """``instruments`` rows (``rows.INSTRUMENTS`` order): kind ``spot``, base/quote from the
        v2 symbol, tick size and minimum order from AssetPairs."""
        out = []
        for symbol, p in self.pairs.items():
            base, quote = symbol.split("/")
            out.append((m.VENUE, symbol, "spot", base, quote, None, None, None, None,
                        _float(p.get("tick_size")), None, _float(p.get("ordermin")),
                        p.get("status", "online") == "online", None, None))
        return out


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class KrakenVenue(Venue):
    """Kraken spot WS v2: trades (``trades``, recoverable by trade id and by time from REST
    ``Trades``) and the exchange's candles (``exchange_candles``, from ``ohlc``)."""

    name = m.VENUE
    settings_class = KrakenSettings
    limits = ConnectionLimits(subscribe_burst=10, subscribe_period_s=1.0,
                              connects_per_period=(150, 600.0))
    channel_streams = CHANNEL_STREAMS
    rest_errors = (KrakenRestError, httpx.HTTPError)
    schema_dir = Path(__file__).parent / "schema"
    sequence_seed_days = None

    def streams(self, settings: KrakenSettings) -> tuple[StreamSpec, ...]:
        return (StreamSpec("trades", TRADES, Recovery.SEQUENCE, sequence_column="trade_seq",
                           stale_warn_s=settings.trades_stale_warn_s),)

    def channel_instrument(self, channel: str) -> str | None:
        """``trade:{symbol}`` / ``ohlc-{n}:{symbol}`` -> the symbol."""
        try:
            return split_channel(channel)[2]
        except ValueError:
            return None

    def ws_endpoints(self, settings: KrakenSettings) -> dict[str, str]:
        return {"public": settings.ws_url}

    def protocol(self, settings: KrakenSettings) -> KrakenProtocol:
        return KrakenProtocol(settings.interval_list)

    def rest_client(self, settings: KrakenSettings, *, base_url: str | None = None,
                    max_concurrency: int = 4) -> KrakenRest:
        return KrakenRest(base_url or settings.rest_url, max_concurrency=max_concurrency,
                          pair_interval_s=settings.rest_pair_interval_s)

    async def fetch_universe(self, rest: KrakenRest, settings: KrakenSettings, group: str) -> Universe:
        """The configured pairs AssetPairs lists (by ``wsname``); the others are left out (the
        collector logs the difference)."""
        entries = await rest.asset_pairs()
        names = await rest.rest_pairs(settings.pair_list)
        pairs = {s: {**entries[k], "rest_name": k} for s, k in names.items()}
        return Universe(pairs, [s for s in settings.pair_list if s in pairs], {})

    async def recovery_pages(self, rest: KrakenRest, gap, plan: RecoveryPlan, settings: KrakenSettings,
                             instrument_groups: Mapping[str, tuple[str, str]],
                             ) -> AsyncIterator[list[tuple] | tuple[TableSpec, list[tuple]]]:
        """Trades from REST ``Trades`` paged by the ``since`` cursor from the gap's start: by trade
        id range (``seq``: the missing ids only, until an id past ``seq_to``) or by window (the
        trades strictly inside it, until one after ``gap_end``), per pair (every configured pair
        for ``*``). Only rows the stream did not deliver are yielded: REST's time is float
        seconds, which cannot carry every µs, so a delivered trade could come back under another
        natural key; a window's edge trades were delivered, and a disconnect also shows as a
        trade id jump at the first trade after it, recovered by id.
        A time window (``time`` plan: a disconnect) also lost the ``ohlc`` updates: after the
        trades, ``(EXCHANGE_CANDLES, rows)`` per pair and configured interval
        (:meth:`window_candles`).

        Raises:
            KrakenRestError: a call failed, a pair is not listed, or a page holds a malformed row
                (the gap stays open and is retried).
        """
        symbols = settings.pair_list if gap.instrument_name == "*" else (gap.instrument_name,)
        names = await rest.rest_pairs(symbols)
        for symbol in symbols:
            if symbol not in names:
                raise KrakenRestError("AssetPairs", 200, f"pair {symbol} is not listed")
            async for page in self.trade_history(rest, symbol, names[symbol], gap.gap_start * 1000):
                if plan.method == "seq":
                    yield [r for r in page if gap.seq_from <= r[3] <= gap.seq_to]
                    done = any(r[3] > gap.seq_to for r in page)
                else:   # inside the window: its edges are trades the stream delivered, and
                    # REST's float-second time may put them a µs off (another natural key)
                    yield [r for r in page if gap.gap_start < r[4] < gap.gap_end]
                    done = any(r[4] > gap.gap_end for r in page)
                if done:
                    break
        if plan.method == "time":
            for symbol in symbols:
                for interval in settings.interval_list:
                    yield EXCHANGE_CANDLES, await self.window_candles(
                        rest, symbol, names[symbol], interval, gap.gap_start)

    @staticmethod
    async def window_candles(rest: KrakenRest, symbol: str, rest_name: str, interval: int,
                             start_us: int) -> list[tuple]:
        """``exchange_candles`` rows of ``symbol``'s ``interval``-minute candles a disconnect
        window starting at ``start_us`` (µs, UTC) may have left missing or open: from the one
        before the candle holding ``start_us`` (its closing update, the next candle's first
        message, may be lost too, leaving its stored row open) up to now, from one REST ``OHLC``
        call (``since`` one interval before the first). Up to now, not to the window's end
        (the first trade after the reconnect): the ``ohlc`` resubscription may be
        acknowledged after that trade, losing the candles between. Every candle but REST's newest
        is final and stored ``closed`` (an open row is corrected, a closed one never changes:
        ``EXCHANGE_CANDLES.upsert``); REST's newest, still open, is left to the WS stream, whose
        resubscription snapshot and updates carry its later states. OHLC returns only the 720
        latest entries: candles of the window older than those cannot be fetched (logged).

        Raises:
            KrakenRestError: the call failed, or a row is malformed (named).
        """
        step_s = interval * 60
        first_s = (start_us // 1_000_000) // step_s * step_s - step_s
        raw = await rest.ohlc(rest_name, interval, first_s - step_s)
        now_us = time.time_ns() // 1000
        try:
            rows = [m.rest_ohlc_row(symbol, interval, r, now_us, True) for r in raw[:-1]]
        except m.BadValue as exc:
            raise KrakenRestError("OHLC", 200, f"malformed candle of {symbol}: {exc}") from None
        if len(raw) >= OHLC_LIMIT and rows and rows[0][3] // 1_000_000 > first_s:
            log.warning("kraken: %s %d-minute candles from %d s to %d s are older than REST OHLC's "
                        "%d latest entries and cannot be refetched", symbol, interval, first_s,
                        rows[0][3] // 1_000_000, OHLC_LIMIT)
        return [r for r in rows if r[3] // 1_000_000 >= first_s]

    @staticmethod
    async def trade_history(rest: KrakenRest, symbol: str, rest_name: str,
                            since_ns: int) -> AsyncIterator[list[tuple]]:
        """``trades`` rows of ``symbol`` from ``since_ns`` to now, page by page.

        Raises:
            KrakenRestError: a call failed, or a row is malformed (named).
        """
        async for raw, _ in rest.trade_pages(rest_name, since_ns):
            now_us = time.time_ns() // 1000
            try:
                yield [m.rest_trade_row(symbol, r, now_us) for r in raw]
            except m.BadValue as exc:
                raise KrakenRestError("Trades", 200, f"malformed trade of {symbol}: {exc}") from None

    def emulation(self, fanout: int = 1, churn: bool = False):
        from collector_daemon.venues.kraken.emulation import KrakenEmulation
        return KrakenEmulation(fanout=fanout, churn=churn)


VENUE = KrakenVenue()
