"""Deribit API v2 WebSocket protocol: channel names, subscribe/heartbeat frames, limits, decoding.

Facts used (../shared/reference/exchange-apis-and-peers.md A.1-A.4):
- best bid/ask, mark, IVs, greeks and underlying come on ``ticker.{instrument}.100ms``; every
  option print of a currency on ``trades.option.{currency}.100ms``. ``raw`` intervals need
  authentication (error 13778), so the collector uses ``100ms``.
- A frame over 32 kB is rejected (-32600), so at most 250 channels go in one subscribe frame.
- The subscribe result lists the channels actually subscribed; unknown ones are dropped
  silently, so the connection diffs the ack against the request.
- ``public/set_heartbeat`` (interval >= 10 s) makes the server send ``test_request`` frames that
  must be answered with ``public/test`` or the socket is closed.
"""

from __future__ import annotations

import json
from collections.abc import Container, Sequence

import msgspec

from collector_daemon.rows import QUOTES, TRADES
from collector_daemon.venues import (
    Control, Data, Decoder, IdSource, ReadBatch, RejectedFrame, Request, Response, VenueProtocol,
)
from collector_daemon.venues.deribit import messages as m

#: ``public/subscribe`` frames stay under Deribit's 32 kB request limit with 250 option channels.
MAX_CHANNELS_PER_SUBSCRIBE = 250
#: Interval suffix for unauthenticated streaming (``raw`` needs an API key).
INTERVAL = "100ms"

_TEST_REPLY_ID = 0  # id of public/test replies; their responses are ignored

#: Channel prefix -> stream: tickers feed ``quotes``, the chain-wide trades channels ``trades``.
CHANNEL_STREAMS = {"trades.": "trades", "ticker.": "quotes"}


def ticker_channel(instrument_name: str) -> str:
    """``ticker.{instrument_name}.100ms``."""
    return f"ticker.{instrument_name}.{INTERVAL}"


def trades_channel(currency: str, kind: str = "option") -> str:
    """``trades.{kind}.{currency}.100ms``: every trade of that kind and currency."""
    return f"trades.{kind}.{currency}.{INTERVAL}"


def rpc_frame(request_id: int, method: str, params: dict) -> str:
    """A JSON-RPC 2.0 request frame."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
                      separators=(",", ":"))


_TEST_REPLY = rpc_frame(_TEST_REPLY_ID, "public/test", {})
_TICKER_PREFIX = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.'
_TRADES_PREFIX = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.'



class DeribitProtocol(VenueProtocol, Decoder):
    """Deribit's WebSocket protocol for the instruments of some currencies and kinds.

    Args:
        currencies: ``("ETH",)``, ``("ETH", "BTC")``, ...: select the chain-wide trades channels.
        kinds: instrument kinds collected (``option``, ``future``): one chain-wide trades channel
            ``trades.{kind}.{currency}.100ms`` per currency and kind; tickers per instrument.
        heartbeat_s: ``public/set_heartbeat`` interval in seconds (Deribit minimum 10).
    """

    name = m.VENUE
    max_channels_per_subscribe = MAX_CHANNELS_PER_SUBSCRIBE
    channel_streams = CHANNEL_STREAMS

    def __init__(self, currencies: tuple[str, ...] | str, kinds: tuple[str, ...] = ("option",),
                 heartbeat_s: int = 10) -> None:
        if heartbeat_s < 10:
            raise ValueError("Deribit heartbeat interval must be >= 10 s")
        self.currencies = (currencies,) if isinstance(currencies, str) else tuple(currencies)
        self.trade_kinds = tuple(kinds)
        self.heartbeat_s = heartbeat_s

    def trades_channels(self) -> list[str]:
        """The chain-wide trades channels: one per currency and kind."""
        return [trades_channel(c, k) for c in self.currencies for k in self.trade_kinds]

    def channels_for(self, instruments: list[str]) -> list[str]:
        """The chain-wide trades channels first, then one ticker channel per instrument."""
        return self.trades_channels() + [ticker_channel(name) for name in instruments]

    def decoder(self) -> "DeribitProtocol":
        """Deribit's frames decode without state: one decoder (this object) serves every connection."""
        return self

    async def open_requests(self, next_id: IdSource) -> list[Request]:
        return [self._request(next_id(), "public/set_heartbeat", {"interval": self.heartbeat_s})]

    def subscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request(next_id(), "public/subscribe", {"channels": channels}, channels)

    def unsubscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request(next_id(), "public/unsubscribe", {"channels": channels}, channels)

    @staticmethod
    def _request(request_id: int, method: str, params: dict, channels: list[str] = ()) -> Request:
        return Request(request_id, rpc_frame(request_id, method, params), tuple(channels))

    def acknowledged_channels(self, request: Request, responses: list[Response]) -> list[str]:
        """The channels listed in the result of ``public/(un)subscribe`` (Deribit drops unknown
        channels silently, so the connection diffs this against the request)."""
        acked = set()
        for response in responses:
            if isinstance(response.result, list):
                acked.update(c for c in response.result if isinstance(c, str))
        return [c for c in request.channels if c in acked]

    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        """Decode one frame. Notifications become ``quotes`` / ``trades`` rows.

        Raises:
            RejectedFrame: not JSON, wrong types or ranges, unknown channel or frame kind.
        """
        # The general path: envelope first, then the payload by channel kind. The hot path is
        # decode_read's (a whole notification in one typed pass).
        if isinstance(frame, bytes):
            frame = frame.decode("utf-8", "replace")
        try:
            env = m.envelope_decoder.decode(frame)
            if env.method == "subscription":
                params = env.params
                if params is None or params.channel is None or not params.data:
                    raise RejectedFrame("subscription without channel or data")
                channel = params.channel
                if channel.startswith("ticker."):
                    return _quotes(channel, m.ticker_decoder.decode(params.data), receive_us)
                if channel.startswith("trades."):
                    return Data(TRADES, [t.to_row(receive_us)
                                         for t in m.trades_decoder.decode(params.data)], channel)
                raise RejectedFrame(f"unknown channel {channel[:200]!r}")
            if env.method == "heartbeat":
                if env.params is not None and env.params.type == "test_request":
                    return Control(_TEST_REPLY)
                return Control(None)
            if env.id is not None:
                if env.id == _TEST_REPLY_ID:
                    return Control(None)
                error = None if env.error is None else {"code": env.error.code,
                                                        "message": env.error.message}
                result = msgspec.json.decode(env.result) if env.result else None
                return Response(env.id, result, error)
        except msgspec.DecodeError as exc:
            raise RejectedFrame(f"decode error: {exc}") from None
        raise RejectedFrame("neither a notification nor a response")

    def decode_read(self, frames: Sequence[str | bytes], receive_us: int, accepting: Container[str],
                    max_frame_chars: int) -> ReadBatch:
        """Decode one socket read (see :meth:`Decoder.decode_read`). Fast path: a ticker or
        trades notification of an accepted channel, in Deribit's key order, decodes in one typed
        pass and its rows go straight into the batch (no :class:`Data` per frame); its ticker's
        instrument must be the channel's. Deribit serialises notifications with a fixed key
        order, so the channel kind shows in the prefix (about twice as fast as envelope, then
        payload). Every other frame (heartbeats, responses, odd key
        orders, bad frames, channels not accepted) takes the general path, :meth:`decode`, which
        also gives the rejection reason."""
        batch = ReadBatch()
        quotes = trades = None
        decode_ticker = m.ticker_notification_decoder.decode
        decode_trades = m.trades_notification_decoder.decode
        decode_error = msgspec.DecodeError
        for frame in frames:
            if type(frame) is str and len(frame) <= max_frame_chars:
                if frame.startswith(_TICKER_PREFIX):
                    try:
                        params = decode_ticker(frame).params
                    except decode_error:
                        pass
                    else:
                        channel, ticker = params.channel, params.data
                        if channel in accepting and _instrument_of(channel) == ticker.instrument_name:
                            if quotes is None:
                                quotes = batch.rows_of(QUOTES)
                            quotes.append(ticker.to_row(receive_us))
                            batch.messages += 1
                            continue
                elif frame.startswith(_TRADES_PREFIX):
                    try:
                        params = decode_trades(frame).params
                    except decode_error:
                        pass
                    else:
                        if params.channel in accepting:
                            if trades is None:
                                trades = batch.rows_of(TRADES)
                            trades.extend([t.to_row(receive_us) for t in params.data])
                            batch.messages += 1
                            continue
            batch.add_frame(self, frame, receive_us, accepting, max_frame_chars)
        return batch


def _quotes(channel: str, ticker: m.Ticker, receive_us: int) -> Data:
    """The quotes row of a ticker notification.

    Raises:
        RejectedFrame: the ticker's instrument is not the channel's (``ticker.{name}.{interval}``).
    """
    if _instrument_of(channel) != ticker.instrument_name:
        raise RejectedFrame(f"ticker of {ticker.instrument_name!r} on channel {channel!r}")
    return Data(QUOTES, [ticker.to_row(receive_us)], channel)


def _instrument_of(ticker_channel_name: str) -> str:
    """``name`` of ``ticker.{name}.{interval}``."""
    return ticker_channel_name[7:ticker_channel_name.rfind(".")]
