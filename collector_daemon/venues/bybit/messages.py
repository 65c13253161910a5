"""Bybit v5 public messages: the venue's tables and the rows its frames and REST answers become.

Sources (../shared/reference/exchange-apis-and-peers.md section B; bybit-exchange/docs
``docs/v5/websocket/public/ticker.mdx``, ``trade.mdx``, ``docs/v5/market/recent-trade.mdx``,
``instrument.mdx``):

* ``tickers.{symbol}``: ``{"topic","type":"snapshot"|"delta","ts","cs","data":{...}}``; linear
  (and inverse) tickers are a snapshot followed by deltas where "a missing field means
  unchanged"; spot and option tickers are snapshots only (options carry no ``cs``).
* ``publicTrade.{symbol}`` (options: ``publicTrade.{baseCoin}``): ``data`` is a list of trades
  ``{"T" fill ms, "s", "S" Buy|Sell, "v", "p", "L" tick direction, "i" trade id, "BT" block
  trade, "RPI", "seq"}``, options also ``mP, iP, mIv, iv``.
* ``/v5/market/recent-trade``: ``{execId, symbol, price, size, side, time, isBlockTrade, ...}``.

Every price, size, IV and greek arrives as a decimal string; rows keep the string as is and the
columns are ``numeric`` (PostgreSQL parses it exactly, keeping its scale: ``"65114.20"`` reads
back as ``65114.20``), so nothing is rounded through a binary float. Bybit's empty string
(``"preOpenPrice": ""``, a future's ``"fundingRate": ""``) is stored as NULL; the ``fields``
column still lists the field as carried.

Instrument names: the Bybit symbol for linear and option instruments; spot symbols are suffixed
``-SPOT`` (``BTCUSDT-SPOT``) because spot and linear share symbols (``BTCUSDT``) and instrument
names are unique per venue (``instruments``, ``data_gaps``).
"""

from __future__ import annotations

import json


from collector_daemon.rows import TableSpec, register_table
from collector_daemon.venues import decode_json_object

VENUE = "bybit"
CATEGORIES = ("linear", "option", "spot")
SPOT_SUFFIX = "-SPOT"

#: Ticker field (Bybit name) -> numeric column. Linear names ``bid1Price``, options ``bidPrice``.
TICKER_NUMERIC = {
    "lastPrice": "last_price",
    "bid1Price": "best_bid_price", "bidPrice": "best_bid_price",
    "bid1Size": "best_bid_amount", "bidSize": "best_bid_amount",
    "ask1Price": "best_ask_price", "askPrice": "best_ask_price",
    "ask1Size": "best_ask_amount", "askSize": "best_ask_amount",
    "bidIv": "bid_iv", "askIv": "ask_iv",
    "markPrice": "mark_price", "markPriceIv": "mark_iv",
    "indexPrice": "index_price", "underlyingPrice": "underlying_price",
    "usdIndexPrice": "usd_index_price",
    "openInterest": "open_interest", "openInterestValue": "open_interest_value",
    "fundingRate": "funding_rate", "fundingCap": "funding_cap",
    "fundingIntervalHour": "funding_interval_hour",
    "prevPrice24h": "prev_price_24h", "price24hPcnt": "price_24h_pcnt",
    "highPrice24h": "high_price_24h", "lowPrice24h": "low_price_24h", "prevPrice1h": "prev_price_1h",
    "volume24h": "volume_24h", "turnover24h": "turnover_24h",
    "delta": "delta", "gamma": "gamma", "vega": "vega", "theta": "theta",
    "totalVolume": "total_volume", "totalTurnover": "total_turnover", "change24h": "change_24h",
    "predictedDeliveryPrice": "predicted_delivery_price",
    "basis": "basis", "basisRate": "basis_rate", "deliveryFeeRate": "delivery_fee_rate",
    "preOpenPrice": "pre_open_price", "preQty": "pre_qty",
}
#: Ticker field -> text column.
TICKER_TEXT = {"tickDirection": "tick_direction", "deliveryTime": "delivery_time",
               "curPreListingPhase": "cur_pre_listing_phase"}
#: Ticker field -> timestamptz column (Bybit sends ms since epoch as a string).
TICKER_MS = {"nextFundingTime": "next_funding_time"}

_VALUE_COLUMNS = tuple(dict.fromkeys([*TICKER_NUMERIC.values(), *TICKER_TEXT.values(),
                                      *TICKER_MS.values()]))
_KNOWN = {"symbol", *TICKER_NUMERIC, *TICKER_TEXT, *TICKER_MS}

TICKERS = register_table(TableSpec(
    "bybit_tickers",
    ("venue", "category", "instrument_name", "exchange_ts", "receive_ts", "cross_seq",
     "message_type", "fields", *_VALUE_COLUMNS, "other"),
    natural_key=("exchange_ts", "venue", "category", "instrument_name"),
    timestamp_columns=("exchange_ts", "receive_ts", "next_funding_time"),
))
_COLUMN_INDEX = {c: i for i, c in enumerate(TICKERS.columns)}
_FIELD_INDEX = {f: _COLUMN_INDEX[c] for f, c in (*TICKER_NUMERIC.items(), *TICKER_TEXT.items())}
_MS_INDEX = {f: _COLUMN_INDEX[c] for f, c in TICKER_MS.items()}
_OTHER = _COLUMN_INDEX["other"]

TRADES = register_table(TableSpec(
    "bybit_trades",
    ("venue", "category", "instrument_name", "trade_id", "exchange_ts", "receive_ts", "price",
     "amount", "direction", "tick_direction", "block_trade", "rpi", "cross_seq", "mark_price",
     "index_price", "mark_iv", "iv", "source"),
    natural_key=("exchange_ts", "venue", "category", "instrument_name", "trade_id"),
    timestamp_columns=("exchange_ts", "receive_ts"),
))


def instrument_name(category: str, symbol: str) -> str:
    """The venue-unique instrument name of a Bybit symbol (spot: ``BTCUSDT-SPOT``)."""
    return symbol + SPOT_SUFFIX if category == "spot" else symbol


def symbol_of(name: str) -> tuple[str, str]:
    """``(category, symbol)`` of an instrument name: ``-SPOT`` -> spot, four or more dash-separated
    parts (``ETH-26SEP25-3000-C``, ``...-C-USDT``) -> option, else linear."""
    if name.endswith(SPOT_SUFFIX):
        return "spot", name[:-len(SPOT_SUFFIX)]
    return ("option" if name.count("-") >= 3 else "linear"), name


#: The first ms after 9999-12-31 (timestamps beyond are refused: not a time Bybit sends).
MAX_MS = 253_402_300_800_000


class BadValue(ValueError):
    """A field of a message has the wrong type or shape."""


def _num(value: object, field: str) -> str | None:
    """A decimal string kept exactly; ``""``/missing -> None.

    Raises:
        BadValue: not a string (Bybit quotes every decimal) or not a number.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadValue(f"{field}: expected a decimal string, got {type(value).__name__}")
    try:
        float(value)
    except ValueError:
        raise BadValue(f"{field}: not a number: {value[:50]!r}") from None
    if value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity", "+inf"):
        raise BadValue(f"{field}: not a finite number: {value!r}")
    return value


def _ms_us(value: object, field: str) -> int | None:
    """ms since epoch (int or digit string) -> µs; ``""``/``"0"``/missing -> None.

    Raises:
        BadValue: not an integer, or not a time between 1970 and 9999.
    """
    if value is None or value == "" or value == "0" or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadValue(f"{field}: expected ms since epoch, got {value!r}")
    try:
        ms = int(value)
    except ValueError:
        raise BadValue(f"{field}: expected ms since epoch, got {value!r}") from None
    if not 0 < ms < MAX_MS:
        raise BadValue(f"{field}: {ms} ms is not a time between 1970 and 9999")
    return ms * 1000


def ticker_row(category: str, state: dict, carried: list[str], message_type: str,
               exchange_ms: int, cross_seq: int | None, receive_us: int) -> tuple:
    """One ``bybit_tickers`` row: the complete quote ``state`` (the merged snapshot + deltas, or
    the snapshot itself), the names of the fields the message carried, its ``ts`` (ms) and ``cs``.

    Raises:
        BadValue: a field of the wrong type.
    """
    symbol = state.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise BadValue("ticker without symbol")
    row: list = [None] * len(TICKERS.columns)
    row[0], row[1], row[2] = VENUE, category, instrument_name(category, symbol)
    row[3], row[4], row[5], row[6], row[7] = exchange_ms * 1000, receive_us, cross_seq, message_type, carried
    other = None
    for field, value in state.items():
        i = _FIELD_INDEX.get(field)
        if i is not None:
            if field in TICKER_TEXT:
                if value is not None and not isinstance(value, str):
                    raise BadValue(f"{field}: expected a string")
                row[i] = value or None
            else:
                row[i] = _num(value, field)
        elif field in _MS_INDEX:
            row[_MS_INDEX[field]] = _ms_us(value, field)
        elif field not in _KNOWN:
            if other is None:
                other = {}
            other[field] = value
    if other is not None:
        row[_OTHER] = json.dumps(other, separators=(",", ":"))
    return tuple(row)


def _bool(value: object, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise BadValue(f"{field}: expected true/false, got {value!r}")


def _side(value: object) -> str:
    if value == "Buy":
        return "buy"
    if value == "Sell":
        return "sell"
    raise BadValue(f"side: expected Buy or Sell, got {value!r}")


def trade_row(category: str, trade: dict, receive_us: int, source: str = "ws") -> tuple:
    """One ``bybit_trades`` row from a ``publicTrade`` entry (WebSocket names ``T s S v p L i BT
    RPI seq mP iP mIv iv``) or a ``recent-trade`` entry (``time symbol side size price execId
    isBlockTrade isRPITrade seq mP iP mIv iv``; ``source="rest"``).

    Raises:
        BadValue: a field is missing or of the wrong type.
    """
    if not isinstance(trade, dict):
        raise BadValue("trade is not an object")
    ws = source == "ws"
    symbol, trade_id = trade.get("s" if ws else "symbol"), trade.get("i" if ws else "execId")
    if not isinstance(symbol, str) or not symbol or not isinstance(trade_id, str) or not trade_id:
        raise BadValue("trade without symbol or trade id")
    ts = _ms_us(trade.get("T" if ws else "time"), "T")
    if ts is None:
        raise BadValue("trade without fill time")
    price, size = _num(trade.get("p" if ws else "price"), "p"), _num(trade.get("v" if ws else "size"), "v")
    if price is None or size is None:
        raise BadValue("trade without price or size")
    seq = trade.get("seq")
    if seq is not None:
        try:
            seq = int(seq)
        except (TypeError, ValueError):
            raise BadValue(f"seq: expected an integer, got {seq!r}") from None
    tick = trade.get("L")
    if tick is not None and not isinstance(tick, str):
        raise BadValue("L: expected a string")
    return (VENUE, category, instrument_name(category, symbol), trade_id, ts, receive_us, price, size,
            _side(trade.get("S" if ws else "side")), tick,
            _bool(trade.get("BT" if ws else "isBlockTrade"), "BT"),
            _bool(trade.get("RPI" if ws else "isRPITrade"), "RPI"), seq,
            _num(trade.get("mP"), "mP"), _num(trade.get("iP"), "iP"), _num(trade.get("mIv"), "mIv"),
            _num(trade.get("iv"), "iv"), source)


#: One WebSocket frame (public or private) as its JSON object (the venues' shared step).
decode_object = decode_json_object
