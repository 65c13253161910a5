"""Bybit v5 private data of trading accounts: the ``accounts`` table, secrets, the HMAC ``auth``
op, and the ``execution`` stream into ``bybit_executions``.

Facts (../shared/reference/exchange-apis-and-peers.md B; bybit-exchange/docs
``docs/v5/websocket/wss-authentication.mdx``, ``private/execution.mdx``):

* one private connection per account to ``wss://stream.bybit.com/v5/private``; authenticate with
  ``{"req_id","op":"auth","args":[api_key, expires, signature]}`` where ``expires`` is a ms
  timestamp in the future and ``signature = hex(HMAC_SHA256(secret, "GET/realtime" + expires))``;
  the answer is ``{"success","ret_msg","op":"auth","req_id","conn_id"}``;
* ``execution`` (all categories) pushes ``{"topic":"execution","id","creationTime","data":[fill, ...]}``
  with every fill's ``category, symbol, orderId, orderLinkId, side, orderPrice, orderQty,
  leavesQty, orderType, stopOrderType, execFee, execId, execPrice, execQty, execPnl, execType,
  execValue, execTime, isMaker, feeRate, tradeIv, markIv, markPrice, indexPrice,
  underlyingPrice, blockTradeId, closedSize, seq, feeCurrency, extraFees`` (decimal strings);
* private pongs are ``{"req_id","op":"pong","args":[ms],"conn_id"}``.

Secrets never live in the database: ``accounts.secret_ref`` says where the secret is,
``env:VARIABLE`` or ``file:/path`` (a Docker/Kubernetes secrets mount). A secret is read when a
connection authenticates and is never logged, stored or put in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from collector_daemon.rows import TableSpec, register_table
from collector_daemon.venues import (
    Control, Data, Decoder, IdSource, RejectedFrame, Request, Response, VenueProtocol,
)
from collector_daemon.venues.bybit import messages as m

PRIVATE_URL = "wss://stream.bybit.com/v5/private"
#: Private topics collected (the all-in-one topics; ``execution.{category}`` must not be mixed in).
EXECUTION_TOPIC = "execution"
#: How far in the future an auth request's ``expires`` lies (ms).
AUTH_EXPIRES_MS = 10_000

#: Execution field (Bybit name) -> numeric column.
EXECUTION_NUMERIC = {
    "orderPrice": "order_price", "orderQty": "order_qty", "leavesQty": "leaves_qty",
    "execFee": "exec_fee", "execPrice": "exec_price", "execQty": "exec_qty", "execPnl": "exec_pnl",
    "execValue": "exec_value", "feeRate": "fee_rate", "tradeIv": "trade_iv", "markIv": "mark_iv",
    "markPrice": "mark_price", "indexPrice": "index_price", "underlyingPrice": "underlying_price",
    "closedSize": "closed_size",
}
#: Execution field -> text column.
EXECUTION_TEXT = {
    "orderId": "order_id", "orderLinkId": "order_link_id", "orderType": "order_type",
    "stopOrderType": "stop_order_type", "execType": "exec_type", "blockTradeId": "block_trade_id",
    "feeCurrency": "fee_currency",
}
_EXEC_CATEGORIES = ("linear", "option", "spot", "inverse")
_EXEC_HANDLED = {"category", "symbol", "execId", "execTime", "side", "isMaker", "seq",
                 *EXECUTION_NUMERIC, *EXECUTION_TEXT}

EXECUTIONS = register_table(TableSpec(
    "bybit_executions",
    ("venue", "account_id", "run_tag", "category", "instrument_name", "exec_id", "exchange_ts",
     "receive_ts", "side", "is_maker", "seq", *EXECUTION_NUMERIC.values(), *EXECUTION_TEXT.values(),
     "other", "source"),
    natural_key=("exchange_ts", "account_id", "exec_id"),
    timestamp_columns=("exchange_ts", "receive_ts"),
))


class SecretError(RuntimeError):
    """An account's secret cannot be read (the message names the reference, never the secret)."""


@dataclass(frozen=True)
class Account:
    """One ``accounts`` row (enabled).

    Attributes:
        account_id: the row's id (stored in every private row).
        label: a human name.
        key_id: the API key (public part).
        secret_ref: ``env:VARIABLE`` or ``file:/path``.
        run_tag: optional run/strategy tag stored with every row of the account.
    """

    account_id: int
    label: str
    key_id: str
    secret_ref: str = field(repr=False)
    run_tag: str | None = None

    def secret(self) -> str:
        """The API secret, read now from where ``secret_ref`` points.

        Raises:
            SecretError: unknown scheme, unset variable, unreadable or empty file.
        """
        return resolve_secret(self.secret_ref)


def resolve_secret(ref: str) -> str:
    """The secret ``ref`` points to: ``env:VARIABLE`` or ``file:/path`` (trailing newline removed).

    Raises:
        SecretError: naming ``ref`` (which holds no secret), never the value.
    """
    scheme, _, where = ref.partition(":")
    if scheme == "env" and where:
        value = os.environ.get(where)
        if not value:
            raise SecretError(f"secret {ref}: environment variable not set or empty")
        return value
    if scheme == "file" and where:
        try:
            value = Path(where).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"secret {ref}: cannot read the file ({exc.strerror})") from None
        if not value:
            raise SecretError(f"secret {ref}: the file is empty")
        return value
    raise SecretError(f"secret reference {ref!r}: expected env:VARIABLE or file:/path")


async def load_accounts(conn: asyncpg.Connection, venue: str = m.VENUE) -> list[Account]:
    """The enabled accounts of ``venue``, by id."""
    rows = await conn.fetch(
        "SELECT account_id, label, key_id, secret_ref, run_tag FROM accounts "
        "WHERE venue = $1 AND enabled ORDER BY account_id", venue)
    return [Account(r["account_id"], r["label"], r["key_id"], r["secret_ref"], r["run_tag"]) for r in rows]


def signature(secret: str, expires_ms: int) -> str:
    """``hex(HMAC_SHA256(secret, "GET/realtime" + expires))`` (Bybit's WebSocket auth)."""
    return hmac.new(secret.encode(), f"GET/realtime{expires_ms}".encode(), hashlib.sha256).hexdigest()


def execution_row(account: Account, fill: dict, receive_us: int, source: str = "ws") -> tuple:
    """One ``bybit_executions`` row of one fill of ``account``.

    Raises:
        BadValue: a field is missing or of the wrong type.
    """
    if not isinstance(fill, dict):
        raise m.BadValue("fill is not an object")
    category, symbol, exec_id = fill.get("category"), fill.get("symbol"), fill.get("execId")
    if category not in _EXEC_CATEGORIES or not isinstance(symbol, str) or not symbol \
            or not isinstance(exec_id, str) or not exec_id:
        raise m.BadValue("fill without category, symbol or execId")
    ts = m._ms_us(fill.get("execTime"), "execTime")
    if ts is None:
        raise m.BadValue("fill without execTime")
    side = fill.get("side")
    if side not in ("Buy", "Sell"):
        raise m.BadValue(f"side: expected Buy or Sell, got {side!r}")
    maker = fill.get("isMaker")
    if maker is not None and not isinstance(maker, bool):
        raise m.BadValue("isMaker: expected true/false")
    seq = fill.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise m.BadValue("seq: expected an integer")
    numeric = tuple(m._num(fill.get(f), f) for f in EXECUTION_NUMERIC)
    text = []
    for f in EXECUTION_TEXT:
        v = fill.get(f)
        if v is not None and not isinstance(v, str):
            raise m.BadValue(f"{f}: expected a string")
        text.append(v or None)
    other = {k: v for k, v in fill.items() if k not in _EXEC_HANDLED}
    return (m.VENUE, account.account_id, account.run_tag, category, m.instrument_name(category, symbol),
            exec_id, ts, receive_us, side.lower(), maker, seq, *numeric, *text,
            json.dumps(other, separators=(",", ":")) if other else None, source)




class BybitPrivateProtocol(VenueProtocol):
    """The private connection of one account: ``auth`` on open, then ``execution``.

    Args:
        account: the account (its secret is read at each authentication).
        clock_ms: current time in ms (tests move it).
    """

    name = m.VENUE
    max_channels_per_subscribe = 10
    ping_interval_s = 20.0
    channel_streams = {EXECUTION_TOPIC: "executions"}

    def __init__(self, account: Account, clock_ms=lambda: time.time_ns() // 1_000_000) -> None:
        self.account = account
        self._clock_ms = clock_ms

    def endpoint_of(self, channel: str) -> str:
        return "private"

    def channels_for(self, instruments: list[str]) -> list[str]:
        return [EXECUTION_TOPIC]

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
        """``execution`` -> ``bybit_executions`` rows (with the account id and run tag); auth and
        subscribe answers -> :class:`Response`; pongs -> :class:`Control`.

        Raises:
            RejectedFrame: not JSON, a malformed fill, an unknown topic or frame kind.
        """
        msg = m.decode_object(frame)
        topic = msg.get("topic")
        if topic == EXECUTION_TOPIC:
            data = msg.get("data")
            if not isinstance(data, list):
                raise RejectedFrame("execution without a data list")
            try:
                return Data(EXECUTIONS, [execution_row(self.account, f, receive_us) for f in data], topic)
            except m.BadValue as exc:
                raise RejectedFrame(f"execution: {exc}") from None
        if topic is not None:
            raise RejectedFrame(f"private topic not collected: {str(topic)[:200]!r}")
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
