"""Typed Deribit API v2 messages (msgspec Structs) and their conversion to table rows.

Sources: ticker notification https://docs.deribit.com/subscriptions/market-data/tickerinstrument_nameinterval
(schema ``TickerNotification``), trades notification ``trades.{kind}.{currency}.{interval}``,
``public/get_instruments`` and ``public/get_book_summary_by_currency`` (OpenAPI v2.1.1), summarised
in ../shared/reference/exchange-apis-and-peers.md section A.

The structs of the notification hot path are ``gc=False`` (never tracked by the cyclic garbage
collector: they hold only scalars, other structs and lists, so they cannot form a cycle): of what
a ticker frame allocates, only its row tuple counts toward the collector's generation-0 threshold.

Units as Deribit sends them: ``timestamp`` ms since the Unix epoch (UTC); option prices in the base
currency (ETH); option ``amount`` and ``open_interest`` in the base currency; ``mark_iv``, ``bid_iv``,
``ask_iv`` and trade ``iv`` in percent. Values are kept exactly (no rounding, no unit conversion).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

VENUE = "deribit"

# ms since epoch, within 2001-09-09 .. 2286-11-20: anything else is a malformed frame.
TimestampMs = Annotated[int, msgspec.Meta(ge=1_000_000_000_000, lt=10_000_000_000_000)]
Price = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]
# Any other number the venue sends (greeks, rates): finite and far from overflow.
Number = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]
# Implied volatility in percent (78.74 = 78.74 %); 0 when there is no bid/ask; combos can be negative.
Iv = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
# Names and ids: Deribit's are < 40 characters. The bound keeps every key within PostgreSQL's
# btree entry limit (~2.7 kB), so an absurd value is a rejected frame, never a failed batch.
Text = Annotated[str, msgspec.Meta(max_length=128)]
# trade_seq lands in a bigint column.
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Greeks(msgspec.Struct, frozen=True, gc=False):
    """``greeks`` object of an option ticker (fields in Deribit's key order, see :class:`Ticker`)."""

    vega: Number | None = None
    theta: Number | None = None
    rho: Number | None = None
    gamma: Number | None = None
    delta: Number | None = None


class Ticker(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """``data`` of a ``ticker.{instrument}.{interval}`` notification (also the ``public/ticker`` result).

    Example (2021-04-05 capture)::

        {"underlying_price":2115.89,"underlying_index":"ETH-9APR21","timestamp":1617644856302,
         "state":"open","open_interest":3963.0,"mark_price":0.084155,"mark_iv":78.74,
         "last_price":0.06,"interest_rate":0.0,"instrument_name":"ETH-9APR21-1950-C",
         "index_price":2103.4,"greeks":{"vega":0.46511,"theta":-5.09811,"rho":0.16173,
         "gamma":0.00134,"delta":0.8609},"bid_iv":51.06,"best_bid_price":0.0795,
         "best_bid_amount":4.0,"best_ask_price":0.0945,"best_ask_amount":5.0,"ask_iv":117.97}

    The fields are declared in the order Deribit sends the keys (keyword-only, so required
    ``timestamp`` and ``instrument_name`` may sit among them): msgspec looks a key up starting at
    the field after the previous one, so in-order keys match at the first try (~8% less decode
    time on the captured ticker frames).
    """

    underlying_price: Price | None = None
    underlying_index: Text | None = None
    timestamp: TimestampMs
    state: Text | None = None
    open_interest: Amount | None = None
    mark_price: Price | None = None
    mark_iv: Iv | None = None
    last_price: Price | None = None
    interest_rate: Number | None = None
    instrument_name: Text
    index_price: Price | None = None
    greeks: Greeks | None = None
    bid_iv: Iv | None = None
    best_bid_price: Price | None = None
    best_bid_amount: Amount | None = None
    best_ask_price: Price | None = None
    best_ask_amount: Amount | None = None
    ask_iv: Iv | None = None

    def to_row(self, receive_us: int) -> tuple:
        """The ``quotes`` row (``collector_daemon.rows.QUOTES`` order); timestamps in µs."""
        g = self.greeks
        if g is None:
            delta = gamma = vega = theta = rho = None
        else:
            delta, gamma, vega, theta, rho = g.delta, g.gamma, g.vega, g.theta, g.rho
        return (
            VENUE, self.instrument_name, self.timestamp * 1000, receive_us,
            self.best_bid_price, self.best_bid_amount, self.best_ask_price, self.best_ask_amount,
            self.mark_price, self.mark_iv, self.bid_iv, self.ask_iv,
            self.underlying_price, self.underlying_index, self.index_price,
            self.open_interest, self.last_price,
            delta, gamma, vega, theta, rho, self.interest_rate, self.state,
        )


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One trade of a ``trades.*`` notification or of a ``public/get_last_trades_*`` result.

    Example (crypto-msg-parser capture, ``trades.option.any.raw``)::

        {"trade_seq":1706,"trade_id":"137488100","timestamp":1616321732986,"tick_direction":0,
         "price":0.007,"mark_price":0.00670817,"iv":78.44,"instrument_name":"BTC-26MAR21-62000-C",
         "index_price":56151.63,"direction":"buy","amount":0.1}
    """

    trade_id: Text
    instrument_name: Text
    timestamp: TimestampMs
    price: Price
    amount: Amount
    direction: Literal["buy", "sell"]
    trade_seq: Seq | None = None
    iv: Iv | None = None
    mark_price: Price | None = None
    index_price: Price | None = None
    tick_direction: Annotated[int, msgspec.Meta(ge=0, le=3)] | None = None
    liquidation: Text | None = None
    block_trade_id: Text | None = None

    def to_row(self, receive_us: int, source: str = "ws") -> tuple:
        """The ``trades`` row (``collector_daemon.rows.TRADES`` order); ``source`` 'ws' or 'rest'."""
        return (
            VENUE, self.instrument_name, self.trade_id, self.trade_seq, self.timestamp * 1000,
            receive_us, self.price, self.amount, self.direction, self.iv, self.mark_price,
            self.index_price, self.tick_direction, self.liquidation, self.block_trade_id, source,
            None,   # ord_type: Deribit does not say
        )


class TradesPage(msgspec.Struct, frozen=True):
    """Result of ``public/get_last_trades_by_*``: ``{"trades": [...], "has_more": bool}``."""

    trades: list[Trade]
    has_more: bool = False


class Instrument(msgspec.Struct, frozen=True):
    """One ``public/get_instruments`` record. Timestamps ms since epoch; strike in USD."""

    instrument_name: str
    kind: str
    base_currency: str | None = None
    quote_currency: str | None = None
    settlement_currency: str | None = None
    counter_currency: str | None = None
    option_type: str | None = None
    strike: float | None = None
    expiration_timestamp: int | None = None
    creation_timestamp: int | None = None
    tick_size: float | None = None
    contract_size: float | None = None
    min_trade_amount: float | None = None
    is_active: bool = True
    settlement_period: str | None = None


class BookSummary(msgspec.Struct, frozen=True):
    """One ``public/get_book_summary_by_currency`` row (the fields we use; options: OI in base coin)."""

    instrument_name: str
    open_interest: float | None = None
    mark_price: float | None = None
    mark_iv: float | None = None
    creation_timestamp: int | None = None


class RpcError(msgspec.Struct, frozen=True):
    """JSON-RPC error object."""

    code: int
    message: str = ""
    data: msgspec.Raw = msgspec.Raw(b"")


class Params(msgspec.Struct, frozen=True):
    """``params`` of a server notification: subscription data or a heartbeat."""

    channel: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    type: str | None = None


class Envelope(msgspec.Struct, frozen=True):
    """Any frame the server sends: a notification (``method``+``params``) or a response (``id``)."""

    jsonrpc: str | None = None
    id: int | None = None
    method: str | None = None
    params: Params | None = None
    result: msgspec.Raw = msgspec.Raw(b"")
    error: RpcError | None = None
    usIn: int | None = None
    usOut: int | None = None


class TickerParams(msgspec.Struct, frozen=True, gc=False):
    """``params`` of a ticker notification."""

    channel: str
    data: Ticker


class TickerNotification(msgspec.Struct, frozen=True, gc=False):
    """A whole ``ticker.*`` notification, decoded in one pass (the hot path); fields in
    Deribit's key order."""

    method: Literal["subscription"]
    params: TickerParams


class TradesParams(msgspec.Struct, frozen=True, gc=False):
    """``params`` of a trades notification."""

    channel: str
    data: list[Trade]


class TradesNotification(msgspec.Struct, frozen=True, gc=False):
    """A whole ``trades.*`` notification, decoded in one pass; fields in
    Deribit's key order."""

    method: Literal["subscription"]
    params: TradesParams


envelope_decoder = msgspec.json.Decoder(Envelope)
ticker_notification_decoder = msgspec.json.Decoder(TickerNotification)
trades_notification_decoder = msgspec.json.Decoder(TradesNotification)
ticker_decoder = msgspec.json.Decoder(Ticker)
trades_decoder = msgspec.json.Decoder(list[Trade])
trades_page_decoder = msgspec.json.Decoder(TradesPage)
instruments_decoder = msgspec.json.Decoder(list[Instrument])
book_summary_decoder = msgspec.json.Decoder(list[BookSummary])


def instrument_row(inst: Instrument, open_interest: float | None) -> tuple:
    """An ``instruments`` row (``collector_daemon.rows.INSTRUMENTS`` order); timestamps µs since epoch."""
    return (
        VENUE, inst.instrument_name, inst.kind, inst.base_currency, inst.quote_currency,
        inst.settlement_currency, inst.option_type, inst.strike,
        None if inst.expiration_timestamp is None else inst.expiration_timestamp * 1000,
        inst.tick_size, inst.contract_size, inst.min_trade_amount, inst.is_active,
        None if inst.creation_timestamp is None else inst.creation_timestamp * 1000,
        open_interest,
    )
