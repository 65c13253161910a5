"""Bybit v5 public WebSocket protocol: one endpoint per category, topics, subscribe frames and
acks, the client ping, and the per-connection decoder (linear tickers: snapshot + deltas).

Facts used (../shared/reference/exchange-apis-and-peers.md B; bybit-exchange/docs
``docs/v5/websocket/wss-authentication.mdx``, slug ``/v5/ws/connect``):

* ``wss://stream.bybit.com/v5/public/{linear|option|spot}``: one endpoint per category.
* Subscribe ``{"req_id","op":"subscribe","args":[topics]}``. Linear and spot answer
  ``{"success","ret_msg","req_id","op":"subscribe"}``; options answer
  ``{"success","type":"COMMAND_RESP","data":{"successTopics":[...],"failTopics":[...]}}``
  (the documented example carries no ``req_id``, so an option request is identified by its
  topics: its ``req_id`` is derived from them).
* Spot takes at most 10 args per request; the ``args`` of one connection stay under 21,000
  characters; options at most 2,000 args per connection.
* ``{"op":"ping"}`` every 20 s; linear/spot answer ``{"success":true,"ret_msg":"pong",
  "op":"ping"}``, options ``{"op":"pong","args":[ts]}``.

Channel names: the Bybit topic, except on the spot endpoint where they carry the prefix
``spot.`` (``spot.tickers.BTCUSDT``): linear and spot share topic names, and a daemon's channel
set must say which endpoint serves each channel.
"""

from __future__ import annotations

import hashlib
import json


from collector_daemon.venues import (
    Control, Data, Decoder, IdSource, RejectedFrame, Request, Response, VenueProtocol,
)
from collector_daemon.venues.bybit import messages as m

#: Spot accepts at most 10 args per subscribe request; the same cap is used on every endpoint.
MAX_ARGS_PER_SUBSCRIBE = 10
#: Bybit: the args of one public connection must stay under this many characters.
MAX_ARGS_CHARS = 21_000
#: Options: at most this many args per connection.
MAX_OPTION_ARGS = 2_000
#: Share of MAX_ARGS_CHARS a connection is planned for: channels are spread over connections by
#: hashing, so one may get somewhat more than the average.
ARGS_HEADROOM = 0.75
#: Seconds between client pings (Bybit recommends 20 s).
PING_INTERVAL_S = 20.0
SPOT_PREFIX = "spot."

#: Channel prefix -> stream.
CHANNEL_STREAMS = {"tickers.": "tickers", "publicTrade.": "trades",
                   "spot.tickers.": "tickers", "spot.publicTrade.": "trades"}

_PING = '{"op":"ping"}'


def topic_of(channel: str) -> str:
    """The Bybit topic of a channel name (without the ``spot.`` prefix)."""
    return channel[len(SPOT_PREFIX):] if channel.startswith(SPOT_PREFIX) else channel


def _is_option_symbol(symbol: str) -> bool:
    return symbol.count("-") >= 3


def _topics_key(topics: list[str]) -> str:
    """The ``req_id`` of an option request, derived from its topics: the COMMAND_RESP answer lists
    them but may echo neither the id nor the op (subscribe or unsubscribe). A connection has one
    request in flight at a time, so the topics identify it."""
    digest = hashlib.blake2b("\n".join(sorted(set(topics))).encode(), digest_size=8).hexdigest()
    return f"topics-{digest}"


class BybitProtocol(VenueProtocol):
    """Bybit v5 public topics for the configured categories.

    Args:
        categories: ``("linear", "option")``, optionally ``"spot"``.
        option_base_coins: base coins whose option trades are collected (``publicTrade.{coin}``).
    """

    name = m.VENUE
    max_channels_per_subscribe = MAX_ARGS_PER_SUBSCRIBE
    ping_interval_s = PING_INTERVAL_S
    channel_streams = CHANNEL_STREAMS

    def __init__(self, categories: tuple[str, ...], option_base_coins: tuple[str, ...] = ()) -> None:
        self.categories = tuple(categories)
        self.option_base_coins = tuple(option_base_coins)

    def endpoint_of(self, channel: str) -> str:
        """``spot``, ``option`` or ``linear`` (the category whose endpoint serves ``channel``)."""
        if channel.startswith(SPOT_PREFIX):
            return "spot"
        kind, _, rest = channel.partition(".")
        if kind == "publicTrade":
            return "option" if rest in self.option_base_coins else "linear"
        return "option" if _is_option_symbol(rest) else "linear"

    def channels_for(self, instruments: list[str]) -> list[str]:
        """Per instrument its ticker topic (and its trades topic, except options, whose trades
        come per base coin: one ``publicTrade.{coin}`` per configured coin)."""
        out = []
        if "option" in self.categories:
            out += [f"publicTrade.{coin}" for coin in self.option_base_coins]
        for name in instruments:
            category, symbol = m.symbol_of(name)
            prefix = SPOT_PREFIX if category == "spot" else ""
            out.append(f"{prefix}tickers.{symbol}")
            if category != "option":
                out.append(f"{prefix}publicTrade.{symbol}")
        return out

    def max_channels_per_connection(self, channels: list[str]) -> int | None:
        """How many of ``channels`` one connection may carry: the 21,000-character args budget
        (with :data:`ARGS_HEADROOM`) at the longest topic, and options' 2,000 args."""
        if not channels:
            return None
        longest = max(len(topic_of(c)) + 3 for c in channels)   # quotes and comma in the JSON
        return max(1, min(MAX_OPTION_ARGS, int(MAX_ARGS_CHARS * ARGS_HEADROOM) // longest))

    async def open_requests(self, next_id: IdSource) -> list[Request]:
        """None: public topics need no set-up (the client ping starts with the connection)."""
        return []

    def subscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request("subscribe", channels, next_id)

    def unsubscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request("unsubscribe", channels, next_id)

    def _request(self, op: str, channels: list[str], next_id: IdSource) -> Request:
        topics = [topic_of(c) for c in channels]
        if channels and self.endpoint_of(channels[0]) == "option":
            req_id = _topics_key(topics)
        else:
            req_id = f"{op}-{next_id()}"
        frame = json.dumps({"req_id": req_id, "op": op, "args": topics}, separators=(",", ":"))
        return Request(req_id, frame, tuple(channels))

    def acknowledged_channels(self, request: Request, responses: list[Response]) -> list[str]:
        """Options: the channels in ``successTopics``; linear/spot: every channel of the request
        when ``success`` is true, none otherwise (the request failed; ``ret_msg`` says why)."""
        acked: set[str] = set()
        for response in responses:
            result = response.result
            if isinstance(result, dict) and "successTopics" in result:
                acked.update(t for t in result.get("successTopics") or () if isinstance(t, str))
            elif response.error is None and isinstance(result, dict) and result.get("success") is True:
                return list(request.channels)
        return [c for c in request.channels if topic_of(c) in acked]

    def ping_frame(self, next_id: IdSource) -> str:
        return _PING

    def decoder(self) -> "BybitDecoder":
        return BybitDecoder("linear")

    def decoder_for(self, endpoint: str) -> "BybitDecoder":
        """A decoder for one connection to ``endpoint`` (its category)."""
        return BybitDecoder(endpoint)




class BybitDecoder(Decoder):
    """Frames of one connection to one category's endpoint. Keeps the linear ticker state
    (snapshot + deltas merged per topic) of this connection only.

    Args:
        category: ``linear``, ``option`` or ``spot``.
    """

    def __init__(self, category: str) -> None:
        if category not in m.CATEGORIES:
            raise ValueError(f"unknown Bybit category {category!r}")
        self.category = category
        self._prefix = SPOT_PREFIX if category == "spot" else ""
        #: topic -> merged ticker (linear: snapshot + deltas; "a missing field means unchanged")
        self.tickers: dict[str, dict] = {}

    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        """Decode one frame: ``tickers.*`` -> ``bybit_tickers`` (one complete quote), ``publicTrade.*``
        -> ``bybit_trades`` (one row per trade), acks -> :class:`Response`, pongs -> :class:`Control`.

        Raises:
            RejectedFrame: not JSON, a delta before its snapshot, a wrong type or missing field,
                an unknown topic or frame kind.
        """
        msg = m.decode_object(frame)
        topic = msg.get("topic")
        try:
            if isinstance(topic, str):
                if topic.startswith("tickers."):
                    return self._ticker(topic, msg, receive_us)
                if topic.startswith("publicTrade."):
                    data = msg.get("data")
                    if not isinstance(data, list):
                        raise RejectedFrame("publicTrade without a data list")
                    category = self.category
                    return Data(m.TRADES, [m.trade_row(category, t, receive_us) for t in data],
                                self._prefix + topic)
                raise RejectedFrame(f"unknown topic {topic[:200]!r}")
        except m.BadValue as exc:
            raise RejectedFrame(f"{topic[:200]}: {exc}") from None
        op = msg.get("op")
        if op == "pong" or (op == "ping" and msg.get("ret_msg") == "pong"):
            return Control(None)
        if msg.get("type") == "COMMAND_RESP":
            data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
            ok = [t for t in data.get("successTopics") or () if isinstance(t, str)]
            failed = [t for t in data.get("failTopics") or () if isinstance(t, str)]
            req_id = msg.get("req_id") or _topics_key(ok + failed)
            error = ({"code": "failTopics", "message": ", ".join(failed[:20])} if failed else None)
            return Response(req_id, {"successTopics": ok, "failTopics": failed}, error)
        if op in ("subscribe", "unsubscribe") and "success" in msg:
            req_id = msg.get("req_id")
            if not req_id:
                raise RejectedFrame(f"{op} answer without req_id")
            ok = msg.get("success") is True
            return Response(req_id, {"success": ok},
                            None if ok else {"code": "ret_msg", "message": str(msg.get("ret_msg"))[:500]})
        raise RejectedFrame("neither a topic message, an ack nor a pong")

    def _ticker(self, topic: str, msg: dict, receive_us: int) -> Data:
        data, kind, ts = msg.get("data"), msg.get("type"), msg.get("ts")
        if not isinstance(data, dict) or not isinstance(ts, int) or isinstance(ts, bool):
            raise RejectedFrame(f"{topic[:200]}: ticker without data object or integer ts")
        if data.get("symbol") != topic[8:]:
            raise RejectedFrame(f"ticker of {data.get('symbol')!r} on topic {topic[:200]!r}")
        cs = msg.get("cs")
        if cs is not None and (not isinstance(cs, int) or isinstance(cs, bool)):
            raise RejectedFrame(f"{topic[:200]}: cs is not an integer")
        if kind == "snapshot":
            state = data
        elif kind == "delta" and self.category == "linear":
            previous = self.tickers.get(topic)
            if previous is None:
                raise RejectedFrame(f"{topic[:200]}: delta before any snapshot on this connection")
            state = {**previous, **data}
        else:
            raise RejectedFrame(f"{topic[:200]}: unexpected ticker type {kind!r}")
        # the row first: a bad message raises here and leaves the state as it was
        row = m.ticker_row(self.category, state, list(data), kind, ts, cs, receive_us)
        if self.category == "linear":
            self.tickers[topic] = state
        return Data(m.TICKERS, [row], self._prefix + topic)
