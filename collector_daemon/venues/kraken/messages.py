"""Kraken spot market data: values, validation and row shapes shared by the WS v2 decoder, the
REST client (gap recovery, history) and the emulation.

Facts (../shared/reference/exchange-apis-and-peers.md C; docs.kraken.com spot-websocket-v2
``trade``/``ohlc``, REST ``get-recent-trades``, ``get-tradable-asset-pairs``):

* WS v2 trade: ``symbol`` (``BTC/USD``), ``side`` (taker: ``buy``/``sell``), ``price``, ``qty``,
  ``ord_type`` (``limit``/``market``), ``trade_id`` (integer, sequential per pair), ``timestamp``
  (RFC 3339, µs or ns digits). A trade without ``ord_type`` (tardis' test frames) stores NULL.
* REST Trades rows: ``[price, volume, time (float s), "b"/"s", "m"/"l", misc, trade_id]``, the
  same ``trade_id`` sequence.
* WS v2 ohlc: ``symbol, open, high, low, close, vwap, trades, volume, interval_begin, interval``
  (minutes: 1, 5, 15, 30, 60, 240, 1440, 10080, 21600).
* v2 symbols use ``BTC`` where REST's ``wsname`` (v1) says ``XBT`` (and ``DOGE`` for ``XDG``).

Rows: ``trades`` (shared table; ``trade_id`` as text and, because Kraken's ids rise by exactly 1
per pair, also as ``trade_seq``: the gap detector's sequence) and ``exchange_candles``.
Timestamps are µs since the Unix epoch (UTC): PostgreSQL's ``timestamptz`` resolution; Kraken's
trade timestamps carry µs, so nothing is lost (sub-µs digits, which Kraken sends as zeros on
``interval_begin``, would be truncated).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

VENUE = "kraken"
#: WS v2 ``ohlc`` intervals (minutes).
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
SIDES = {"buy": "buy", "sell": "sell", "b": "buy", "s": "sell"}
ORD_TYPES = {"limit": "limit", "market": "market", "l": "limit", "m": "market"}
#: Oldest plausible trade time (µs): Kraken opened its exchange in September 2013.
OLDEST_US = 1_377_993_600_000_000          # 2013-09-01T00:00:00Z
#: A trade may be at most this far ahead of our clock (µs): clock skew, not a bad row.
FUTURE_SLACK_US = 86_400_000_000
#: Asset renamings between REST's ``wsname`` (v1 names) and WS v2 symbols.
V2_ASSET_NAMES = {"XBT": "BTC", "XDG": "DOGE"}

class BadValue(ValueError):
    """A field is missing, of the wrong type or implausible; ``str(exc)`` names it (stored as
    the rejected_messages reason)."""


def v2_symbol(wsname: str) -> str:
    """The WS v2 symbol of an AssetPairs ``wsname`` (``XBT/USD`` -> ``BTC/USD``)."""
    base, _, quote = wsname.partition("/")
    return f"{V2_ASSET_NAMES.get(base, base)}/{V2_ASSET_NAMES.get(quote, quote)}"


_second_cache: dict[str, int] = {}


def parse_ts_us(value: object) -> int:
    """RFC 3339 UTC (``2023-10-06T17:35:55.440295Z``, 0-9 fraction digits) -> µs since epoch.

    Raises:
        BadValue: not such a string.
    """
    if not isinstance(value, str) or not value.endswith("Z") or len(value) < 20:
        raise BadValue(f"timestamp {str(value)[:40]!r} is not RFC 3339 UTC")
    head, dot, frac = value[:-1].partition(".")
    base = _second_cache.get(head)
    if base is None:
        try:
            base = int(datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp()) * 1_000_000
        except ValueError:
            raise BadValue(f"timestamp {value[:40]!r} is not RFC 3339 UTC") from None
        if len(_second_cache) > 4096:
            _second_cache.clear()
        _second_cache[head] = base
    if dot:
        if not frac.isdigit() or len(frac) > 9:
            raise BadValue(f"timestamp {value[:40]!r}: bad fraction")
        return base + int((frac + "000000")[:6])
    return base


def iso_us(us: int) -> str:
    """µs since epoch -> RFC 3339 with 6 fraction digits (Kraken's WS trade format)."""
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{us % 1_000_000:06d}Z"


def _positive(name: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadValue(f"{name} {value[:40]!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(f"{name} is not a number: {value!r:.40}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise BadValue(f"{name} {value!r} is not positive and finite")
    return value


def _plausible(us: int, now_us: int) -> int:
    if not OLDEST_US <= us <= now_us + FUTURE_SLACK_US:
        raise BadValue(f"timestamp {us} µs is implausible (before Kraken opened or in the future)")
    return us


def _trade_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadValue(f"trade_id {value!r:.40} is not a non-negative integer")
    return value


def trade_row(symbol: str, trade_id: int, exchange_us: int, price: float, qty: float, side: str,
              ord_type: str, receive_us: int, source: str) -> tuple:
    """A ``trades`` row (``rows.TRADES`` order) of validated values."""
    return (VENUE, symbol, str(trade_id), trade_id, exchange_us, receive_us, price, qty, side,
            None, None, None, None, None, None, source, ord_type)


def ws_trade_row(t: object, receive_us: int) -> tuple:
    """A WS v2 trade object -> a ``trades`` row (``source`` ``ws``).

    Raises:
        BadValue: a field is missing, of the wrong type, not positive/finite, out of its set, or
            the timestamp is implausible.
    """
    if not isinstance(t, dict):
        raise BadValue("trade is not an object")
    symbol = t.get("symbol")
    if not isinstance(symbol, str) or "/" not in symbol:
        raise BadValue(f"trade symbol {symbol!r:.40} is not a pair")
    side = t.get("side")
    if side not in ("buy", "sell"):
        raise BadValue(f"side {side!r:.20} is not buy or sell")
    ord_type = t.get("ord_type")
    if ord_type not in ("limit", "market", None):   # absent in some frames (tardis'): NULL
        raise BadValue(f"ord_type {ord_type!r:.20} is not limit or market")
    wall = time.time_ns() // 1000
    return trade_row(symbol, _trade_id(t.get("trade_id")),
                     _plausible(parse_ts_us(t.get("timestamp")), max(wall, receive_us)),
                     _positive("price", t.get("price")), _positive("qty", t.get("qty")),
                     side, ord_type, receive_us, "ws")


def rest_trade_row(symbol: str, r: object, receive_us: int) -> tuple:
    """A REST Trades row ``[price, volume, time, b/s, m/l, misc, trade_id]`` -> a ``trades``
    row of ``symbol`` (``source`` ``rest``). ``time`` (float s) is rounded to the µs.

    Raises:
        BadValue: the same checks as :func:`ws_trade_row`.
    """
    if not isinstance(r, list) or len(r) < 7:
        raise BadValue("trade row is not a list of 7 fields")
    price, volume, ts, side, ord_type = r[0], r[1], r[2], r[3], r[4]
    if side not in ("b", "s"):
        raise BadValue(f"side {side!r:.20} is not b or s")
    if ord_type not in ("m", "l"):
        raise BadValue(f"type {ord_type!r:.20} is not m or l")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise BadValue(f"time {ts!r:.40} is not a number")
    exchange_us = _plausible(round(ts * 1_000_000), max(time.time_ns() // 1000, receive_us))
    return trade_row(symbol, _trade_id(r[6]), exchange_us, _positive("price", price),
                     _positive("volume", volume), SIDES[side], ORD_TYPES[ord_type], receive_us, "rest")


def ohlc_row(c: object, receive_us: int, closed: bool) -> tuple:
    """A WS v2 ohlc object -> an ``exchange_candles`` row (``source`` ``ws``). An interval
    without trades (``trades`` 0: Kraken sends ``vwap`` 0 and the last close) stores vwap NULL.

    Raises:
        BadValue: a field is missing or of the wrong type, prices not positive, volume negative,
            an unknown interval.
    """
    if not isinstance(c, dict):
        raise BadValue("candle is not an object")
    symbol, interval, trades = c.get("symbol"), c.get("interval"), c.get("trades")
    if not isinstance(symbol, str) or "/" not in symbol:
        raise BadValue(f"candle symbol {symbol!r:.40} is not a pair")
    if interval not in OHLC_INTERVALS or isinstance(interval, bool):
        raise BadValue(f"interval {interval!r:.20} is not one of {OHLC_INTERVALS}")
    if isinstance(trades, bool) or not isinstance(trades, int) or trades < 0:
        raise BadValue(f"trades {trades!r:.20} is not a count")
    return _candle_row(symbol, interval, parse_ts_us(c.get("interval_begin")), c.get("open"),
                       c.get("high"), c.get("low"), c.get("close"), c.get("vwap"), c.get("volume"),
                       trades, closed, "ws", receive_us)


def rest_ohlc_row(symbol: str, interval: int, r: object, receive_us: int, closed: bool) -> tuple:
    """A REST OHLC row ``[time (int s), open, high, low, close, vwap, volume, count]`` (decimal
    strings) of ``symbol`` and ``interval`` (minutes) -> an ``exchange_candles`` row (``source``
    ``rest``), checked as :func:`ohlc_row`.

    Raises:
        BadValue: not a list of 8 fields, a field of the wrong type or out of range.
    """
    if not isinstance(r, list) or len(r) < 8:
        raise BadValue("OHLC row is not a list of 8 fields")
    begin, trades = r[0], r[7]
    if isinstance(begin, bool) or not isinstance(begin, int):
        raise BadValue(f"time {begin!r:.40} is not whole seconds")
    if isinstance(trades, bool) or not isinstance(trades, int) or trades < 0:
        raise BadValue(f"count {trades!r:.20} is not a count")
    try:
        volume = float(r[6])
    except (TypeError, ValueError):
        raise BadValue(f"volume {r[6]!r:.40} is not a number") from None
    vwap = r[5] if trades else None          # an interval without trades has no VWAP
    return _candle_row(symbol, interval, begin * 1_000_000, r[1], r[2], r[3], r[4], vwap, volume,
                       trades, closed, "rest", receive_us)


def _candle_row(symbol: str, interval: int, begin_us: int, open_: object, high: object, low: object,
                close: object, vwap: object, volume: object, trades: int, closed: bool, source: str,
                receive_us: int) -> tuple:
    if isinstance(volume, bool) or not isinstance(volume, (int, float)) or not math.isfinite(volume) \
            or volume < 0:
        raise BadValue(f"volume {volume!r:.40} is not a non-negative number")
    return (VENUE, symbol, interval, begin_us, _positive("open", open_), _positive("high", high),
            _positive("low", low), _positive("close", close),
            None if vwap is None or (vwap == 0 and trades == 0) else _positive("vwap", vwap),
            float(volume), trades, closed, source, receive_us)


def ohlc_key(row: tuple) -> tuple[str, int]:
    """(symbol, interval) of an ``exchange_candles`` row."""
    return row[1], row[2]
