"""Bybit v5 private data of trading accounts: the HMAC ``auth`` op and the ``execution``,
``order``, ``position`` and ``wallet`` streams into ``bybit_executions``, ``bybit_orders``,
``bybit_positions`` and ``bybit_wallet`` (every row with the account id and run tag). The
accounts themselves (table, secret references, following changes) are
:mod:`collector_daemon.core.accounts`.

Facts (../shared/reference/exchange-apis-and-peers.md B; bybit-exchange/docs
``docs/v5/websocket/wss-authentication.mdx``, ``private/execution.mdx``, ``private/order.mdx``,
``private/position.mdx``, ``private/wallet.mdx``):

* one private connection per account to ``wss://stream.bybit.com/v5/private``; authenticate with
  ``{"req_id","op":"auth","args":[api_key, expires, signature]}`` where ``expires`` is a ms
  timestamp in the future and ``signature = hex(HMAC_SHA256(secret, "GET/realtime" + expires))``;
  the answer is ``{"success","ret_msg","op":"auth","req_id","conn_id"}``;
* the all-in-one topics (``execution``, not mixed with ``execution.{category}``) push
  ``{"topic","id","creationTime","data":[...]}``: fills (one message may hold several), order
  updates (duplicate ``Filled`` messages are possible), position snapshots (sent on every order
  create/amend/cancel, even unchanged) and wallet snapshots (no snapshot on subscribe; a change of
  unrealised PnL alone sends nothing), every value a decimal string;
* private pongs are ``{"req_id","op":"pong","args":[ms],"conn_id"}``.

Liveness: the wallet and position streams may be silent for hours, so no private stream has a
staleness limit; the connection's ping (every 20 s) and its pong decide (the watchdog's
``silence_reconnect_s``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector_daemon.core.accounts import Account
from collector_daemon.rows import TableSpec, register_table
from collector_daemon.venues import (
    Control, Data, Decoder, IdSource, RejectedFrame, Request, Response, VenueProtocol,
)
from collector_daemon.venues.bybit import messages as m

PRIVATE_URL = "wss://stream.bybit.com/v5/private"
#: Private topics collected (the all-in-one topics) -> stream name.
PRIVATE_TOPICS = {"execution": "executions", "order": "orders", "position": "positions",
                  "wallet": "wallet"}
EXECUTION_TOPIC = "execution"
#: How far in the future an auth request's ``expires`` lies (ms).
AUTH_EXPIRES_MS = 10_000
_CATEGORIES = ("linear", "option", "spot", "inverse")


@dataclass(frozen=True)
class Fields:
    """How the optional fields of one private object become columns.

    Attributes:
        numeric: Bybit field(s) -> numeric column (decimal strings kept exact; ``""`` = NULL).
            A column may take the first present of several fields (``entryPrice``/``avgPrice``).
        text / ints / bools / ms: likewise for text, integer, boolean and ms-since-epoch fields.
    """

    numeric: dict[str, str]
    text: dict[str, str]
    ints: dict[str, str]
    bools: dict[str, str]
    ms: dict[str, str]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns, in :meth:`values` order."""
        return tuple(dict.fromkeys([*self.numeric.values(), *self.text.values(), *self.ints.values(),
                                    *self.bools.values(), *self.ms.values()]))

    @property
    def handled(self) -> frozenset[str]:
        """Every Bybit field with a column."""
        return frozenset([*self.numeric, *self.text, *self.ints, *self.bools, *self.ms])

    def values(self, obj: dict) -> tuple:
        """The column values of ``obj``, in :attr:`columns` order.

        Raises:
            BadValue: a field of the wrong type.
        """
        out: dict[str, object] = {}
        for f, col in self.numeric.items():
            if out.get(col) is None:
                out[col] = m._num(obj.get(f), f)
        for f, col in self.text.items():
            v = obj.get(f)
            if v is not None and not isinstance(v, str):
                raise m.BadValue(f"{f}: expected a string")
            out[col] = v or None
        for f, col in self.ints.items():
            out[col] = _int(obj.get(f), f, col)
        for f, col in self.bools.items():
            out[col] = m._bool(obj.get(f), f)
        for f, col in self.ms.items():
            out[col] = m._ms_us(obj.get(f), f)
        return tuple(out[c] for c in self.columns)

    def other(self, obj: dict, also: tuple[str, ...] = ()) -> dict:
        """Fields of ``obj`` without a column (stored as sent in ``other``)."""
        handled = self.handled
        return {k: v for k, v in obj.items() if k not in handled and k not in also}


#: Integer columns narrower than bigint: their range (positionIdx: 0 one-way, 1/2 hedge mode).
_INT_RANGE = {"position_idx": (0, 2)}


def _int(value: object, field: str, column: str) -> int | None:
    """An integer field within its column's range (bigint unless :data:`_INT_RANGE` says).

    Raises:
        BadValue: not an integer, or out of range.
    """
    if value is None:
        return None
    low, high = _INT_RANGE.get(column, (-2**63, 2**63 - 1))
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise m.BadValue(f"{field}: expected an integer in [{low}, {high}], got {str(value)[:30]}")
    return value


def _fields(numeric=(), text=(), ints=(), bools=(), ms=()) -> Fields:
    """A :class:`Fields` from Bybit names (column: the name in snake case) or (name, column) pairs."""
    def as_map(items) -> dict[str, str]:
        return dict(i if isinstance(i, tuple) else
                    (i, "".join("_" + c.lower() if c.isupper() else c for c in i)) for i in items)
    return Fields(as_map(numeric), as_map(text), as_map(ints), as_map(bools), as_map(ms))


EXECUTION_FIELDS = _fields(
    numeric=("orderPrice", "orderQty", "leavesQty", "execFee", "execPrice", "execQty", "execPnl",
             "execValue", "feeRate", "tradeIv", "markIv", "markPrice", "indexPrice", "underlyingPrice",
             "closedSize"),
    text=("orderId", "orderLinkId", "orderType", "stopOrderType", "execType", "blockTradeId",
          "feeCurrency"),
    ints=("seq",), bools=(("isMaker", "is_maker"),))
ORDER_FIELDS = _fields(
    numeric=("price", "qty", "avgPrice", "leavesQty", "leavesValue", "cumExecValue", "cumExecFee",
             ("orderIv", "order_iv"), "triggerPrice", "takeProfit", "stopLoss", "lastPriceOnCreated"),
    text=("orderLinkId", "orderType", "timeInForce", "cancelType", "rejectReason", "stopOrderType",
          "blockTradeId", "feeCurrency", "createType"),
    ints=("positionIdx",), bools=("reduceOnly",), ms=(("createdTime", "created_ts"),))
POSITION_FIELDS = _fields(
    numeric=("size", "entryPrice", ("avgPrice", "entry_price"), "markPrice", "leverage", "positionValue",
             "positionBalance", ("positionIM", "position_im"), ("positionMM", "position_mm"), "liqPrice",
             "bustPrice", "takeProfit", "stopLoss", "trailingStop", "unrealisedPnl", "curRealisedPnl",
             "cumRealisedPnl", "delta", "gamma", "vega", "theta"),
    text=("positionStatus", "tpslMode"), ints=("seq",), bools=(), ms=(("createdTime", "created_ts"),))
WALLET_ACCOUNT_FIELDS = _fields(numeric=(
    "totalEquity", "totalWalletBalance", "totalMarginBalance", "totalAvailableBalance",
    "totalInitialMargin", "totalMaintenanceMargin", ("accountIMRate", "account_im_rate"),
    ("accountMMRate", "account_mm_rate"), ("accountLTV", "account_ltv")))
WALLET_COIN_FIELDS = _fields(numeric=(
    "equity", "walletBalance", "availableToWithdraw", "availableToBorrow", "borrowAmount",
    "accruedInterest", ("totalOrderIM", "total_order_im"), ("totalPositionIM", "total_position_im"),
    ("totalPositionMM", "total_position_mm"), "unrealisedPnl", "cumRealisedPnl", "usdValue", "locked",
    "spotBorrow"))

_OWNER = ("venue", "account_id", "run_tag")
EXECUTIONS = register_table(TableSpec(
    "bybit_executions",
    (*_OWNER, "category", "instrument_name", "exec_id", "exchange_ts", "receive_ts", "side",
     *EXECUTION_FIELDS.columns, "other", "source"),
    natural_key=("exchange_ts", "account_id", "exec_id"),
    timestamp_columns=("exchange_ts", "receive_ts"),
))
ORDERS = register_table(TableSpec(
    "bybit_orders",
    (*_OWNER, "category", "instrument_name", "order_id", "exchange_ts", "receive_ts", "order_status",
     "side", "cum_exec_qty", *ORDER_FIELDS.columns, "other", "source"),
    natural_key=("exchange_ts", "account_id", "order_id", "order_status", "cum_exec_qty"),
    timestamp_columns=("exchange_ts", "receive_ts", "created_ts"),
))
POSITIONS = register_table(TableSpec(
    "bybit_positions",
    (*_OWNER, "category", "instrument_name", "position_idx", "exchange_ts", "receive_ts", "side",
     *POSITION_FIELDS.columns, "other", "source"),
    natural_key=("exchange_ts", "account_id", "category", "instrument_name", "position_idx"),
    timestamp_columns=("exchange_ts", "receive_ts", "created_ts"),
))
WALLET = register_table(TableSpec(
    "bybit_wallet",
    (*_OWNER, "account_type", "coin", "exchange_ts", "receive_ts", *WALLET_COIN_FIELDS.columns,
     *WALLET_ACCOUNT_FIELDS.columns, "other", "source"),
    natural_key=("exchange_ts", "account_id", "account_type", "coin"),
    timestamp_columns=("exchange_ts", "receive_ts"),
))
#: Private tables by topic.
TOPIC_TABLES = {"execution": EXECUTIONS, "order": ORDERS, "position": POSITIONS, "wallet": WALLET}


def signature(secret: str, expires_ms: int) -> str:
    """``hex(HMAC_SHA256(secret, "GET/realtime" + expires))`` (Bybit's WebSocket auth)."""
    return hmac.new(secret.encode(), f"GET/realtime{expires_ms}".encode(), hashlib.sha256).hexdigest()


def _json(other: dict) -> str | None:
    return json.dumps(other, separators=(",", ":")) if other else None


def _head(obj: object, what: str, *required: str) -> dict:
    """``obj`` checked to be an object with a known ``category`` and a non-empty ``symbol``
    and ``required`` string fields.

    Raises:
        BadValue: it is not.
    """
    if not isinstance(obj, dict):
        raise m.BadValue(f"{what} is not an object")
    if obj.get("category") not in _CATEGORIES:
        raise m.BadValue(f"{what}: category {str(obj.get('category'))[:30]!r} not one of {', '.join(_CATEGORIES)}")
    for f in ("symbol", *required):
        if not isinstance(obj.get(f), str) or not obj[f]:
            raise m.BadValue(f"{what} without {f}")
    return obj


def _time(obj: dict, field: str) -> int:
    ts = m._ms_us(obj.get(field), field)
    if ts is None:
        raise m.BadValue(f"without {field}")
    return ts


def execution_row(account: Account, fill: object, receive_us: int, source: str = "ws") -> tuple:
    """One ``bybit_executions`` row of one fill of ``account`` (stream or ``/v5/execution/list``,
    same shape).

    Raises:
        BadValue: a field is missing or of the wrong type.
    """
    f = _head(fill, "fill", "execId")
    return (m.VENUE, account.account_id, account.run_tag, f["category"],
            m.instrument_name(f["category"], f["symbol"]), f["execId"], _time(f, "execTime"), receive_us,
            m._side(f.get("side")), *EXECUTION_FIELDS.values(f),
            _json(EXECUTION_FIELDS.other(f, ("category", "symbol", "execId", "execTime", "side"))), source)


def order_row(account: Account, order: object, receive_us: int, source: str = "ws") -> tuple:
    """One ``bybit_orders`` row of one order update (stream or ``/v5/order/history``).

    Raises:
        BadValue: a field is missing or of the wrong type.
    """
    o = _head(order, "order", "orderId", "orderStatus")
    cum = m._num(o.get("cumExecQty"), "cumExecQty")
    if cum is None:
        raise m.BadValue("order without cumExecQty")
    return (m.VENUE, account.account_id, account.run_tag, o["category"],
            m.instrument_name(o["category"], o["symbol"]), o["orderId"], _time(o, "updatedTime"), receive_us,
            o["orderStatus"], m._side(o.get("side")), cum, *ORDER_FIELDS.values(o),
            _json(ORDER_FIELDS.other(o, ("category", "symbol", "orderId", "updatedTime", "orderStatus",
                                         "side", "cumExecQty"))), source)


def position_row(account: Account, position: object, receive_us: int, source: str = "ws",
                 category: str | None = None) -> tuple:
    """One ``bybit_positions`` row of one position snapshot (stream, or ``/v5/position/list``
    whose entries carry no category: ``category`` gives it).

    Raises:
        BadValue: a field is missing or of the wrong type.
    """
    if category is not None and isinstance(position, dict):
        position = {"category": category, **position}
    p = _head(position, "position")
    idx = _int(p.get("positionIdx", 0), "positionIdx", "position_idx")
    if idx is None:
        raise m.BadValue("positionIdx: null")
    side = p.get("side")
    return (m.VENUE, account.account_id, account.run_tag, p["category"],
            m.instrument_name(p["category"], p["symbol"]), idx, _time(p, "updatedTime"), receive_us,
            None if side in ("", "None", None) else m._side(side), *POSITION_FIELDS.values(p),
            _json(POSITION_FIELDS.other(p, ("category", "symbol", "positionIdx", "updatedTime", "side"))),
            source)


def wallet_rows(account: Account, wallet: object, exchange_us: int, receive_us: int,
                source: str = "ws") -> list[tuple]:
    """The ``bybit_wallet`` rows of one wallet snapshot (one account type): one per coin, the
    account totals on each.

    Raises:
        BadValue: a field is missing or of the wrong type.
    """
    if not isinstance(wallet, dict) or not isinstance(wallet.get("coin"), list):
        raise m.BadValue("wallet without a coin list")
    account_type = wallet.get("accountType") or ""
    if not isinstance(account_type, str):
        raise m.BadValue("accountType: expected a string")
    totals = WALLET_ACCOUNT_FIELDS.values(wallet)
    account_other = WALLET_ACCOUNT_FIELDS.other(wallet, ("coin", "accountType"))
    rows = []
    for c in wallet["coin"]:
        if not isinstance(c, dict) or not isinstance(c.get("coin"), str) or not c["coin"]:
            raise m.BadValue("wallet coin entry without coin")
        other = {**account_other, **WALLET_COIN_FIELDS.other(c, ("coin",))}
        rows.append((m.VENUE, account.account_id, account.run_tag, account_type, c["coin"], exchange_us,
                     receive_us, *WALLET_COIN_FIELDS.values(c), *totals, _json(other), source))
    return rows


def topic_rows(account: Account, topic: str, msg: dict, receive_us: int) -> list[tuple]:
    """The rows of one private topic message (``execution``, ``order``, ``position``, ``wallet``).

    Raises:
        BadValue: a malformed entry (the whole message is rejected: nothing half-stored).
    """
    data = msg.get("data")
    if not isinstance(data, list):
        raise m.BadValue("without a data list")
    if topic == "execution":
        return [execution_row(account, f, receive_us) for f in data]
    if topic == "order":
        return [order_row(account, o, receive_us) for o in data]
    if topic == "position":
        return [position_row(account, p, receive_us) for p in data]
    created = _time(msg, "creationTime")
    return [r for w in data for r in wallet_rows(account, w, created, receive_us)]


class BybitPrivateProtocol(VenueProtocol):
    """The private connection of one account: ``auth`` on open, then the private topics.

    Args:
        account: the account (its secret is read at each authentication).
        topics: the topics collected (default all of :data:`PRIVATE_TOPICS`).
        clock_ms: current time in ms (tests move it).
    """

    name = m.VENUE
    max_channels_per_subscribe = 10
    ping_interval_s = 20.0
    channel_streams = PRIVATE_TOPICS

    def __init__(self, account: Account, topics: tuple[str, ...] = tuple(PRIVATE_TOPICS),
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.account = account
        self.topics = topics
        self._clock_ms = clock_ms

    def endpoint_of(self, channel: str) -> str:
        return "private"

    def channels_for(self, instruments: list[str]) -> list[str]:
        return list(self.topics)

    async def open_requests(self, next_id: IdSource) -> list[Request]:
        """The ``auth`` request (signed now; the secret is read here and kept nowhere).

        Raises:
            SecretError: the secret cannot be read (the connection backs off and retries).
        """
        expires = self._clock_ms() + AUTH_EXPIRES_MS
        req_id = f"auth-{next_id()}"
        frame = json.dumps({"req_id": req_id, "op": "auth",
                            "args": [self.account.key_id, expires, signature(self.account.secret(), expires)]},
                           separators=(",", ":"))
        return [Request(req_id, frame)]

    def subscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request("subscribe", channels, next_id)

    def unsubscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        return self._request("unsubscribe", channels, next_id)

    @staticmethod
    def _request(op: str, channels: list[str], next_id: IdSource) -> Request:
        req_id = f"{op}-{next_id()}"
        return Request(req_id, json.dumps({"req_id": req_id, "op": op, "args": channels},
                                          separators=(",", ":")), tuple(channels))

    def acknowledged_channels(self, request: Request, responses: list[Response]) -> list[str]:
        ok = any(r.error is None and isinstance(r.result, dict) and r.result.get("success") is True
                 for r in responses)
        return list(request.channels) if ok else []

    def ping_frame(self, next_id: IdSource) -> str:
        return '{"op":"ping"}'

    def decoder(self) -> "BybitPrivateDecoder":
        return BybitPrivateDecoder(self.account)


class BybitPrivateDecoder(Decoder):
    """Frames of one account's private connection."""

    def __init__(self, account: Account) -> None:
        self.account = account

    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        """A private topic message -> its table's rows (with the account id and run tag); auth
        and subscribe answers -> :class:`Response`; pongs -> :class:`Control`.

        Raises:
            RejectedFrame: not JSON, a NUL character (``\\u0000``) anywhere, a malformed entry,
                an unknown topic or frame kind.
        """
        if (b"\\u0000" if isinstance(frame, bytes) else "\\u0000") in frame:
            raise RejectedFrame("a string holds a NUL character (PostgreSQL text cannot)")
        msg = m.decode_object(frame)
        topic = msg.get("topic")
        if topic is not None:
            table = TOPIC_TABLES.get(topic) if isinstance(topic, str) else None
            if table is None:
                raise RejectedFrame(f"private topic not collected: {str(topic)[:200]!r}")
            try:
                return Data(table, topic_rows(self.account, topic, msg, receive_us), topic)
            except m.BadValue as exc:
                raise RejectedFrame(f"{topic}: {exc}") from None
        op = msg.get("op")
        if op == "pong" or (op == "ping" and msg.get("ret_msg") == "pong"):
            return Control(None)
        if op in ("auth", "subscribe", "unsubscribe") and "success" in msg:
            req_id = msg.get("req_id")
            if not req_id:
                raise RejectedFrame(f"{op} answer without req_id")
            ok = msg.get("success") is True
            return Response(req_id, {"success": ok},
                            None if ok else {"code": op, "message": str(msg.get("ret_msg"))[:500]})
        raise RejectedFrame("neither a private topic message, an answer nor a pong")
