"""Kraken spot WebSocket v2 (``wss://ws.kraken.com/v2``): channels, subscribe frames, acks (one
per symbol), the application ping, the ``status`` and ``heartbeat`` channels, and the
per-connection decoder.

Facts (../shared/reference/exchange-apis-and-peers.md C; docs.kraken.com spot-websocket-v2
``trade``, ``ohlc``, ``status``, ``heartbeat``, ``ping``):

* subscribe ``{"method":"subscribe","params":{"channel":"trade","symbol":[...],"snapshot":false},
  "req_id":N}`` (``ohlc`` adds ``"interval"``); the answer comes **once per symbol**:
  ``{"method":"subscribe","result":{"channel","symbol",...},"success":true,"req_id":N,...}`` or
  ``{"method":"subscribe","success":false,"error":"...","symbol":...,"req_id":N}``;
* ``{"channel":"heartbeat"}`` about once per idle second after any subscription; ``{"channel":
  "status","data":[{"system":"online"|"maintenance"|"cancel_only"|"post_only",...}]}`` on connect
  and on changes; idle connections are closed after about a minute, so the client sends
  ``{"method":"ping","req_id":N}`` (answer ``{"method":"pong",...}``);
* data: ``{"channel":"trade"|"ohlc","type":"snapshot"|"update","data":[...]}``.

Channel names (ours): ``trade:{symbol}`` and ``ohlc-{interval}:{symbol}`` (``trade:BTC/USD``,
``ohlc-1:BTC/USD``); the instrument name is the v2 symbol.

OHLC: an open candle is updated by later messages; Kraken marks no candle closed, so the decoder
stores each message's state as open (``closed`` false) and, when a message for a later
``interval_begin`` of the same symbol and interval arrives (or a snapshot lists older ones),
stores the previous candle's last state again with ``closed`` true. The table keeps the last state
of an open candle and never changes a closed one (``rows.EXCHANGE_CANDLES.upsert``).
"""

from __future__ import annotations

import json

from collector_daemon.rows import EXCHANGE_CANDLES, TRADES
from collector_daemon.venues import (
    Control, Data, Decoder, IdSource, RejectedFrame, Request, Response, VenueProtocol,
    decode_json_object,
)
from collector_daemon.venues.kraken import messages as m

#: Symbols per subscribe frame (each frame names one channel kind).
MAX_SYMBOLS_PER_SUBSCRIBE = 50
#: Client ping period (s): Kraken closes connections idle for about a minute.
PING_INTERVAL_S = 30.0
#: Kraken: during maintenance, reconnect no faster than every 5 s.
MAINTENANCE_RECONNECT_S = 5.0
STATUSES = ("online", "maintenance", "cancel_only", "post_only", "limit_only")

#: Channel prefix -> stream (ohlc candles are not a gap-tracked stream: they carry no exchange_ts
#: and a resubscription's snapshot sends the recent candles again).
CHANNEL_STREAMS = {"trade:": "trades"}


def channel_name(kind: str, symbol: str, interval: int | None = None) -> str:
    """``trade:{symbol}`` or ``ohlc-{interval}:{symbol}``."""
    return f"{kind}:{symbol}" if interval is None else f"{kind}-{interval}:{symbol}"


def split_channel(channel: str) -> tuple[str, int | None, str]:
    """(kind, interval or None, symbol) of one of our channel names.

    Raises:
        ValueError: not one of our channel names.
    """
    head, sep, symbol = channel.partition(":")
    if not sep or not symbol:
        raise ValueError(f"not a Kraken channel: {channel!r}")
    kind, _, interval = head.partition("-")
    return kind, (int(interval) if interval else None), symbol


class KrakenProtocol(VenueProtocol):
    """Kraken WS v2 ``trade`` and ``ohlc`` (configured intervals) per pair.

    Args:
        ohlc_intervals: minutes of the ``ohlc`` channels subscribed per pair (may be empty).
    """

    name = m.VENUE
    max_channels_per_subscribe = MAX_SYMBOLS_PER_SUBSCRIBE
    ping_interval_s = PING_INTERVAL_S
    channel_streams = CHANNEL_STREAMS

    def __init__(self, ohlc_intervals: tuple[int, ...] = (1,)) -> None:
        self.ohlc_intervals = tuple(ohlc_intervals)

    def channels_for(self, instruments: list[str]) -> list[str]:
        """Per pair: ``trade:{symbol}`` and ``ohlc-{interval}:{symbol}`` per configured interval."""
        out = []
        for symbol in instruments:
            out.append(channel_name("trade", symbol))
            out += [channel_name("ohlc", symbol, i) for i in self.ohlc_intervals]
        return out

    def subscribe_batches(self, channels: list[str]) -> list[list[str]]:
        """Grouped by channel kind and interval (one frame names one), then chunks of
        :data:`MAX_SYMBOLS_PER_SUBSCRIBE` symbols."""
        groups: dict[str, list[str]] = {}
        for c in channels:
            groups.setdefault(c.partition(":")[0], []).append(c)
        step = self.max_channels_per_subscribe
        return [g[i:i + step] for g in groups.values() for i in range(0, len(g), step)]

    def min_reconnect_delay_s(self, status: str | None) -> float:
        """5 s while the last announced status is ``maintenance``."""
        return MAINTENANCE_RECONNECT_S if status == "maintenance" else 0.0

    async def open_requests(self, next_id: IdSource) -> list[Request]:
        """None: ``status`` comes on connect, ``heartbeat`` after any subscription."""
        return []

    def subscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request("subscribe", channels, next_id)

    def unsubscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request("unsubscribe", channels, next_id)

    def _request(self, method: str, channels: list[str], next_id: IdSource) -> Request:
        kind, interval, _ = split_channel(channels[0])
        symbols = [split_channel(c)[2] for c in channels]
        params: dict = {"channel": kind, "symbol": symbols}
        if interval is not None:
            params["interval"] = interval
        if method == "subscribe":
            params["snapshot"] = kind == "ohlc"   # the current candles; trades come from REST
        req_id = next_id()
        frame = json.dumps({"method": method, "params": params, "req_id": req_id},
                           separators=(",", ":"))
        return Request(req_id, frame, tuple(channels), responses=len(symbols))

    def acknowledged_channels(self, request: Request, responses: list[Response]) -> list[str]:
        """The channels whose symbol got a ``success: true`` answer (one answer per symbol)."""
        acked = set()
        for r in responses:
            res = r.result
            if r.error is None and isinstance(res, dict):
                acked.add(channel_name(res.get("channel"), res.get("symbol"), res.get("interval")))
        return [c for c in request.channels if c in acked]

    def ping_frame(self, next_id: IdSource) -> str:
        return json.dumps({"method": "ping", "req_id": next_id()}, separators=(",", ":"))

    def decoder(self) -> "KrakenDecoder":
        return KrakenDecoder()


class KrakenDecoder(Decoder):
    """Frames of one connection; keeps the last state of each open candle of this connection."""

    def __init__(self) -> None:
        #: (symbol, interval) -> last row of its newest candle
        self.candles: dict[tuple[str, int], tuple] = {}

    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        """``trade`` -> ``trades`` rows, ``ohlc`` -> ``exchange_candles`` rows, acks ->
        :class:`Response`, ``heartbeat``/pong -> :class:`Control`, ``status`` -> a Control with
        the system status.

        Raises:
            RejectedFrame: not a JSON object, a bad field (named), several symbols in one data
                frame, an unknown channel or method.
        """
        msg = decode_json_object(frame)
        channel = msg.get("channel")
        if channel is not None:
            if channel == "heartbeat":
                return Control(None)
            data = msg.get("data")
            if not isinstance(data, list) or not data:
                raise RejectedFrame(f"{str(channel)[:40]} frame without a data list")
            try:
                if channel == "trade":
                    rows = [m.ws_trade_row(t, receive_us) for t in data]
                    return Data(TRADES, rows, channel_name("trade", self._one_symbol(rows)))
                if channel == "ohlc":
                    return self._ohlc(data, msg.get("type"), receive_us)
                if channel == "status":
                    system = data[0].get("system") if isinstance(data[0], dict) else None
                    if system not in STATUSES:
                        raise RejectedFrame(f"status {str(system)[:40]!r} is not one of {STATUSES}")
                    return Control(None, status=system)
            except m.BadValue as exc:
                raise RejectedFrame(f"{channel}: {exc}") from None
            raise RejectedFrame(f"unknown channel {str(channel)[:40]!r}")
        method = msg.get("method")
        if method == "pong":
            return Control(None)
        if method in ("subscribe", "unsubscribe"):
            req_id = msg.get("req_id")
            if req_id is None:
                raise RejectedFrame(f"{method} answer without req_id")
            if msg.get("success") is True and isinstance(msg.get("result"), dict):
                return Response(req_id, msg["result"], None)
            return Response(req_id, {"symbol": msg.get("symbol")},
                            {"code": "error", "message": str(msg.get("error"))[:500]})
        raise RejectedFrame(f"neither data, an ack nor a pong (method {str(method)[:40]!r})")

    @staticmethod
    def _one_symbol(rows: list[tuple]) -> str:
        symbol = rows[0][1]
        if any(r[1] != symbol for r in rows):
            raise RejectedFrame("one data frame holds several symbols")
        return symbol

    def _ohlc(self, data: list, kind: object, receive_us: int) -> Data:
        rows = sorted((m.ohlc_row(c, receive_us, False) for c in data), key=lambda r: r[3])
        key = m.ohlc_key(rows[0])
        if any(m.ohlc_key(r) != key for r in rows):
            raise RejectedFrame("ohlc: one data frame holds several symbols or intervals")
        out = []
        previous = self.candles.get(key)
        if previous is not None and previous[3] < rows[0][3]:
            out.append(_closed(previous))                              # its last state, closed
        out += [_closed(r) for r in rows[:-1]]      # a snapshot's older candles are complete
        newest = rows[-1]
        if previous is not None and newest[3] < previous[3]:
            newest = _closed(newest)
        else:
            self.candles[key] = newest
        out.append(newest)
        symbol, interval = key
        return Data(EXCHANGE_CANDLES, out, channel_name("ohlc", symbol, interval))


def _closed(row: tuple) -> tuple:
    """An ``exchange_candles`` row with ``closed`` true."""
    return row[:11] + (True,) + row[12:]
