"""Bybit v5 emulation for the generic emulator (:mod:`collector_daemon.emulator`): the
category endpoints ``/v5/public/{linear,option,spot}``, ping/pong, subscribe acks (refused
topics included), and REST ``/v5/market/instruments-info`` (cursor paging),
``/v5/market/recent-trade`` and ``/v5/market/tickers``, replaying real captures.

Facts followed (../shared/reference/exchange-apis-and-peers.md B, bybit-exchange/docs
``/v5/ws/connect``, ``market/recent-trade.mdx``, ``market/instrument.mdx``):

* acks: linear/spot ``{"success","ret_msg","conn_id","req_id","op"}`` (a request with a refused
  topic answers ``success: false`` naming it); option ``{"success","conn_id","data":
  {"failTopics","successTopics"},"type":"COMMAND_RESP"}`` without ``req_id``;
* pongs: linear/spot ``{"success":true,"ret_msg":"pong",...,"op":"ping"}``, option
  ``{"args":["<ms>"],"op":"pong"}``;
* the args of one connection stay under 21,000 characters, spot takes at most 10 args per request
  (both answered with ``success: false``);
* on subscribing ``tickers.{symbol}`` the client gets the current full snapshot (when the replay
  has one; ``ts`` = the replay clock, when it is generated), then deltas (linear) or snapshots;
* REST errors injected by ``Faults.rest_errors`` alternate between ``retCode 10006`` "Too many
  visits!" and HTTP 403 "access too frequent" (Bybit's IP ban answer); the server's IP limit
  (``EmulatorConfig.rest_ip_limit``, :class:`~collector_daemon.emulator.server.RestIpLimit`)
  answers with the same two;
* recent-trade: newest first, ``limit`` spot [1,60] default 60, others [1,1000] default 500, no
  paging; instruments-info: ``limit`` [1,1000] default 500, ``cursor``/``nextPageCursor``
  (spot not paged), option ``baseCoin`` defaults to BTC.

Private endpoint ``/v5/private``: ``auth`` is checked for real against
:attr:`BybitEmulation.accounts` (API key -> secret; a known key, ``expires`` in the future, the
HMAC-SHA256 of ``GET/realtime{expires}``; failures answer ``success: false`` with a reason, the
texts are the emulator's own); topics need a successful auth ("Request not authorized");
subscribing a topic replays the account's share of :attr:`BybitEmulation.private_frames` (real
v5 execution, order, position and wallet messages, e.g. Nautilus' ``ws_account_*.json``),
re-keyed per account and copy (:meth:`BybitEmulation.private_messages`). The signed REST
endpoints (``execution/list``, ``order/history``, ``position/list``,
``account/wallet-balance``) check the ``X-BAPI-*`` signature for real (retCode 10003 unknown
key, 10002 stale timestamp, 10004 wrong signature) and serve the same traffic plus
``private_rest_only`` copies the stream never sent (fills made while it was down); injected REST
errors (10006, 403) apply to them too.

Timeline: the capture's ``recv`` frames of ``tickers.*`` and ``publicTrade.*`` (category from the
connection's URL) in recorded order, clocked by the running maximum of their ``ts``; the
instruments from its recorded ``instruments-info`` answers. ``trades`` (optional): a file of
v5 frames, one JSON object per line (the tardis-node test frames), whose option ``tickers`` and
``publicTrade`` frames are merged in by ``ts`` (with ``align_trades`` shifted so the first
falls at the capture's first timestamp: a derived stream). Loop k > 0 shifts every timestamp by
k x (span + 1 ms) and suffixes trade ids with ``-L{k}``.

Fan-out (``fanout`` F > 1, for benchmarks): every linear symbol of the timeline gets F - 1
copies ``X{j}{symbol}`` (j = 1 .. F-1, ``BTCUSDT`` -> ``X1BTCUSDT``), listed in instruments-info
with the original's specification and sent every ticker and trade message of the original with
the symbol re-keyed (trade ids kept: a trade is keyed by symbol and id); so a capture of a few
symbols drives a collector subscribed to thousands, with real message shapes and values.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector_daemon.emulator.replay import read_capture
from collector_daemon.emulator.venue import Event, Session, VenueEmulation
from collector_daemon.venues.bybit import messages as m
from collector_daemon.venues.bybit.rest import RECENT_TRADES_LIMIT

PATHS = {"/v5/public/linear": "linear", "/v5/public/option": "option", "/v5/public/spot": "spot",
         "/v5/private": "private"}
MAX_ARGS_CHARS = 21_000
SPOT_MAX_ARGS = 10
_SEP = "|"   # qualified channel: "<category>|<topic>", private: "private|<key>|<topic>"
_PRIVATE_TOPICS = ("execution", "order", "position", "wallet")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _category_of_topic(topic: str) -> str:
    kind, _, rest = topic.partition(".")
    if kind == "publicTrade" and "-" not in rest and not rest.endswith(("USDT", "USDC", "PERP")):
        return "option"
    return "option" if rest.count("-") >= 3 else "linear"


class BybitEmulation(VenueEmulation):
    """Bybit v5 public market data (module docstring)."""

    name = "bybit"
    ws_path = "/v5/public/linear"
    ws_paths = tuple(PATHS)
    rest_prefix = "/v5"
    malformed_kinds = ("truncated", "not_json", "wrong_types", "missing_fields", "unknown_topic",
                       "binary", "oversized")

    def __init__(self, fanout: int = 1, churn: bool = False) -> None:
        super().__init__(fanout, churn)
        #: category -> instruments-info entries
        self.instruments: dict[str, list[dict]] = {c: [] for c in m.CATEGORIES}
        self._known: dict[str, set[str]] = {c: set() for c in m.CATEGORIES}   # symbols and coins
        self._span = 0
        #: fan-out: linear symbol -> its copies
        self.copies: dict[str, list[str]] = {}
        #: (category, symbol) -> current full ticker (published so far)
        self.tickers: dict[tuple[str, str], dict] = {}
        self._ticker_cs: dict[tuple[str, str], int | None] = {}
        self._clock = 0   # ts of the latest event published
        #: (category, symbol) -> latest trades (REST shape), oldest first
        self.trades: dict[tuple[str, str], deque] = {}
        self._args_chars: dict[int, int] = {}
        #: private endpoint: API key -> secret of the accounts it knows (tests set it)
        self.accounts: dict[str, str] = {}
        #: private endpoint: real private messages (execution, order, position, wallet; e.g.
        #: Nautilus' ws_account_*.json) each account's traffic is made of, re-keyed per account
        self.private_frames: list[dict] = []
        #: copies of every private message the stream sends each account on subscribing
        self.private_copies = 1
        #: further copies only REST knows (what happened while the account's stream was down)
        self.private_rest_only = 0
        #: copy k is timed at private_start_ms + k * private_step_ms (None: the message's own
        #: time + k * private_step_ms)
        self.private_start_ms: int | None = None
        self.private_step_ms = 1
        self._authed: dict[int, str] = {}
        #: API key -> the private timeline messages played so far (REST serves them)
        self._private_ledger: dict[str, list[dict]] = {}   # session id -> API key

    # --- timeline -------------------------------------------------------------------------------

    def load(self, capture: Path, trades: Path | None, align_trades: bool = False) -> list[Event]:
        """Events of the capture (and the option frames of ``trades``), ordered by clock."""
        events: list[Event] = []
        clock = 0
        for rec in read_capture(capture):
            if rec.dir == "http_response" and rec.raw and "instruments-info" in (rec.url or ""):
                result = json.loads(rec.raw).get("result") or {}
                category = result.get("category")
                if category in self.instruments:
                    self.instruments[category] += result.get("list") or []
                continue
            if rec.dir != "recv" or not rec.raw or not rec.url:
                continue
            category = PATHS.get(urlsplit(rec.url).path)
            if category is None:
                continue
            event = self._event(category, rec.raw)
            if event is not None:
                clock = max(clock, event.ts)
                event.ts = clock
                events.append(event)
        if trades is not None:
            extra = []
            with open(trades, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        msg = json.loads(line)
                        topic = msg.get("topic", "")
                        if (topic.startswith(("tickers.", "publicTrade.")) and "ts" in msg
                                and _category_of_topic(topic) == "option"):
                            extra.append(msg)
            extra.sort(key=lambda x: x["ts"])
            shift = (events[0].ts - extra[0]["ts"]) if align_trades and events and extra else 0
            for msg in extra:
                event = self._event("option", _dumps(_shift(msg, shift, "")))
                if event is not None:
                    events.append(event)
            events.sort(key=lambda e: e.ts)   # stable: capture order kept within a timestamp
        for category, infos in self.instruments.items():
            self._known[category].update(i["symbol"] for i in infos if isinstance(i.get("symbol"), str))
        for e in events:
            category, topic = e.routes[0].split(_SEP, 1)
            self._known[category].add(topic.partition(".")[2])
        if events:
            self._span = events[-1].ts - events[0].ts
        if self.fanout > 1:
            self._make_copies(events)
        return events

    def _make_copies(self, events: list[Event]) -> None:
        """Fan-out: the copies of every linear symbol with events, listed like the original."""
        symbols = sorted({e.routes[0].split(_SEP, 1)[1].partition(".")[2] for e in events
                          if e.routes[0].startswith("linear" + _SEP)})
        self.copies = {s: [f"X{j}{s}" for j in range(1, self.fanout)] for s in symbols}
        infos = {i.get("symbol"): i for i in self.instruments["linear"]}
        for symbol, copies in self.copies.items():
            self._known["linear"].update(copies)
            if symbol in infos:
                self.instruments["linear"] += [{**infos[symbol], "symbol": c} for c in copies]

    def _copy(self, event: Event, copy: str) -> Event:
        """``event`` (linear) re-keyed to the fan-out symbol ``copy``."""
        kind, _, symbol = event.routes[0].split(_SEP, 1)[1].partition(".")
        msg = dict(event.data, topic=f"{kind}.{copy}")
        if "id" in msg:
            msg["id"] = f"{msg['id']}-{copy}"
        data = msg.get("data")
        if isinstance(data, list):
            msg["data"] = [{**t, "s": copy} for t in data]
        elif isinstance(data, dict) and "symbol" in data:
            msg["data"] = {**data, "symbol": copy}
        ids = tuple((copy, tid) for _, tid in event.trade_ids)
        return Event(event.ts, event.kind, copy, (f"linear{_SEP}{kind}.{copy}",), msg, ids)

    def _event(self, category: str, raw: str) -> Event | None:
        msg = json.loads(raw)
        topic = msg.get("topic")
        if not isinstance(topic, str) or not topic.startswith(("tickers.", "publicTrade.")):
            return None
        route = f"{category}{_SEP}{topic}"
        if topic.startswith("tickers."):
            name = m.instrument_name(category, topic[8:])
            event = Event(msg["ts"], "tickers", name, (route,), msg)
        else:
            ids = tuple((m.instrument_name(category, t["s"]), t["i"]) for t in msg["data"])
            event = Event(msg["ts"], "trades", ids[0][0] if ids else topic, (route,), msg, ids)
        event.encoded = raw.encode()
        return event

    def instantiate(self, event: Event, loop_index: int) -> Sequence[Event]:
        """``event`` as played in loop ``loop_index`` (shifted, trade ids suffixed) followed by
        its fan-out copies."""
        if loop_index > 0:
            shift = loop_index * (self._span + 1)
            suffix = f"-L{loop_index}"
            data = _shift(event.data, shift, suffix)
            ids = tuple((name, tid + suffix) for name, tid in event.trade_ids)
            event = Event(event.ts + shift, event.kind, event.instrument, event.routes, data, ids)
        copies = self.copies.get(event.routes[0].split(_SEP, 1)[1].partition(".")[2]) \
            if self.copies and event.routes[0].startswith("linear" + _SEP) else None
        return (event, *(self._copy(event, c) for c in copies)) if copies else (event,)

    def publish(self, event: Event) -> None:
        if event.kind == "private":   # made now, at the wall clock, and kept for REST
            frame, copy = event.data
            event.data = self._rekey(frame, event.instrument, f"t{copy}", lambda _ms: str(time.time_ns() // 1_000_000))
            event.encoded = None
            self._private_ledger.setdefault(event.instrument, []).append(event.data)
            return
        category, topic = event.routes[0].split(_SEP, 1)
        msg = event.data
        self._clock = max(self._clock, event.ts)
        if event.kind == "tickers":
            key = (category, topic[8:])
            state = self.tickers.get(key) if msg.get("type") == "delta" else None
            self.tickers[key] = {**state, **msg["data"]} if state is not None else dict(msg["data"])
            self._ticker_cs[key] = msg.get("cs")
            return
        for t in msg["data"]:
            rest = {"execId": t["i"], "symbol": t["s"], "price": t["p"], "size": t["v"], "side": t["S"],
                    "time": str(t["T"]), "isBlockTrade": t.get("BT", False)}
            if "RPI" in t:
                rest["isRPITrade"] = t["RPI"]
            for k in ("mP", "iP", "mIv", "iv"):
                if k in t:
                    rest[k] = t[k]
            self.trades.setdefault((category, t["s"]), deque(maxlen=1000)).append(rest)

    # --- channels and frames --------------------------------------------------------------------

    def route(self, channel: str) -> str | None:
        if channel.startswith("private" + _SEP):   # private|<key>|<topic>
            return channel if channel.rsplit(_SEP, 1)[1] in _PRIVATE_TOPICS else None
        category, _, topic = channel.partition(_SEP)
        kind, _, subject = topic.partition(".")
        known = self._known.get(category)
        if known is None or kind not in ("tickers", "publicTrade") or subject not in known:
            return None
        if kind == "publicTrade" and category == "option" and subject.count("-") >= 3:
            return None   # option trades come per base coin
        return channel

    def channel_subject(self, channel: str) -> tuple[str, str | None]:
        if channel.startswith("private" + _SEP):
            return "private", None
        category, _, topic = channel.partition(_SEP)
        kind, _, subject = topic.partition(".")
        if kind == "tickers":
            return "tickers", m.instrument_name(category, subject)
        return "trades", None

    def frame(self, channel: str, event: Event) -> bytes:
        if event.encoded is None:
            event.encoded = _dumps(event.data).encode()
        return event.encoded

    def malformed_frame(self, kind: str, channel: str, event: Event,
                        oversize_bytes: int) -> tuple[bytes, bool]:
        text = self.frame(channel, event).decode()
        msg = json.loads(text)
        if kind == "truncated":
            return text[: max(1, len(text) // 2)].encode(), False
        if kind == "not_json":
            return b"<html>502 Bad Gateway</html>", False
        if kind == "wrong_types":
            msg["ts"] = str(msg.get("ts"))
            data = msg.get("data")
            if isinstance(data, list) and data:
                data[0]["p"] = 1.5
            return _dumps(msg).encode(), False
        if kind == "missing_fields":
            data = msg.get("data")
            if isinstance(data, list) and data:
                data[0].pop("i", None)
            else:
                msg.pop("data", None)
            return _dumps(msg).encode(), False
        if kind == "unknown_topic":
            msg["topic"] = "liquidation.NOSUCH"
            return _dumps(msg).encode(), False
        if kind == "binary":
            return text.encode()[:64], True
        return _dumps({"topic": msg.get("topic"), "pad": "x" * oversize_bytes}).encode(), False

    # --- requests -------------------------------------------------------------------------------

    def handle_message(self, session: Session, message: str | bytes, received_us: int) -> list[str]:
        category = PATHS.get(urlsplit(getattr(session, "path", "") or "").path, "linear")
        conn_id = f"emu-{session.id}"
        try:
            msg = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return [_dumps({"success": False, "ret_msg": "error:request not json", "conn_id": conn_id,
                            "op": ""})]
        if not isinstance(msg, dict):
            msg = {}
        op, req_id = msg.get("op"), msg.get("req_id")
        if category == "private":
            return self._private(session, msg, conn_id, received_us)
        if op == "ping":
            if category == "option":
                return [_dumps({"args": [str(received_us // 1000)], "op": "pong"})]
            return [_dumps({"success": True, "ret_msg": "pong", "conn_id": conn_id,
                            "req_id": req_id or "", "op": "ping"})]
        args = msg.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) \
                or not all(isinstance(a, str) for a in args):
            return [self._ack(category, conn_id, req_id, op, [], list(args or []) if isinstance(args, list) else [],
                              f"error:unsupported request {str(op)[:50]}")]
        qualified = [f"{category}{_SEP}{a}" for a in args]
        if op == "unsubscribe":
            removed = set(session.unsubscribe(qualified))
            self._args_chars[session.id] = max(0, self._args_chars.get(session.id, 0)
                                               - sum(len(a) for a, q in zip(args, qualified) if q in removed))
            return [self._ack(category, conn_id, req_id, op, args, [], "")]
        if category == "spot" and len(args) > SPOT_MAX_ARGS:
            return [self._ack(category, conn_id, req_id, op, [], args,
                              f"error:args count {len(args)} exceeds {SPOT_MAX_ARGS}")]
        used = self._args_chars.get(session.id, 0)
        adding = sum(len(a) for a in args)
        if used + adding >= MAX_ARGS_CHARS:
            return [self._ack(category, conn_id, req_id, op, [], args,
                              f"error:args length exceeds {MAX_ARGS_CHARS} characters per connection")]
        accepted = set(session.subscribe(qualified))
        self._args_chars[session.id] = used + sum(len(a) for a, q in zip(args, qualified) if q in accepted)
        ok = [a for a, q in zip(args, qualified) if q in accepted]
        refused = [a for a, q in zip(args, qualified) if q not in accepted]
        out = [self._ack(category, conn_id, req_id, op, ok, refused,
                         f"error:handler not found,topic:{','.join(refused)}" if refused else "")]
        for topic in ok:   # Bybit starts a ticker subscription with the full snapshot
            key = (category, topic[8:])
            if topic.startswith("tickers.") and key in self.tickers:
                cs = self._ticker_cs[key]
                snap = {"topic": topic, "type": "snapshot", "data": self.tickers[key], "ts": self._clock}
                if cs is not None:
                    snap["cs"] = cs
                out.append(_dumps(snap))
        return out

    def _private(self, session: Session, msg: dict, conn_id: str, received_us: int) -> list[str]:
        """``/v5/private``: ``auth`` checked for real (known key, ``expires`` in the future, the
        HMAC-SHA256 signature of ``GET/realtime{expires}`` with the key's secret); topics need a
        successful auth; ``execution`` gets the account's share of :attr:`private_frames`."""
        op, req_id = msg.get("op"), msg.get("req_id") or ""
        now_ms = received_us // 1000
        if op == "ping":
            return [_dumps({"req_id": req_id, "op": "pong", "args": [str(now_ms)], "conn_id": conn_id})]
        if op == "auth":
            args = msg.get("args")
            ok, why = False, "error:invalid auth args"
            if isinstance(args, list) and len(args) == 3 and isinstance(args[0], str):
                key, expires, sig = args
                secret = self.accounts.get(key)
                if secret is None:
                    why = "error:API key is invalid"
                elif not isinstance(expires, int) or expires <= now_ms:
                    why = "error:auth params expired"
                elif not isinstance(sig, str) or not hmac.compare_digest(
                        sig, hmac.new(secret.encode(), f"GET/realtime{expires}".encode(),
                                      hashlib.sha256).hexdigest()):
                    why = "error:signature verification failed"
                else:
                    ok = True
                    self._authed[session.id] = key
            return [_dumps({"req_id": req_id, "success": ok, "ret_msg": "" if ok else why, "op": "auth",
                            "conn_id": conn_id})]
        if op in ("subscribe", "unsubscribe"):
            key = self._authed.get(session.id)
            if key is None:
                return [_dumps({"req_id": req_id, "success": False, "ret_msg": "Request not authorized",
                                "op": op, "conn_id": conn_id})]
            out = [_dumps({"req_id": req_id, "success": True, "ret_msg": "", "op": op, "conn_id": conn_id})]
            topics = [t for t in msg.get("args") or () if isinstance(t, str)]
            qualified = [f"private{_SEP}{key}{_SEP}{t}" for t in topics]   # the timeline's traffic
            (session.subscribe if op == "subscribe" else session.unsubscribe)(qualified)
            if op == "subscribe":
                for topic in topics:
                    out += [_dumps(f) for f in self.private_messages(key, topic, range(self.private_copies))]
            return out
        return [_dumps({"req_id": req_id, "success": False, "ret_msg": f"error:unsupported op {str(op)[:50]}",
                        "op": op, "conn_id": conn_id})]

    def private_messages(self, key: str, topic: str, copies: range) -> list[dict]:
        """Account ``key``'s messages of ``topic`` sent on subscribing: each of
        :attr:`private_frames` of that topic, as copy k for k in ``copies`` (:meth:`_rekey`,
        timed per :attr:`private_start_ms`)."""
        out = []
        for frame in self.private_frames:
            if frame.get("topic") != topic:
                continue
            for k in copies:
                def at(ms: object, k: int = k) -> str:
                    base = self.private_start_ms if self.private_start_ms is not None else int(ms)
                    return str(base + k * self.private_step_ms)
                out.append(self._rekey(frame, key, str(k), at))
        return out

    @staticmethod
    def _rekey(frame: dict, key: str, copy: str, at) -> dict:
        """A copy of a real private message for account ``key``: ids (``execId``, ``orderId``,
        the message ``id``) suffixed ``-{key}-{copy}``, every event time ``at(original)``; the
        other fields as the real message has them."""
        topic = frame["topic"]
        data = []
        for d in frame["data"]:
            d = dict(d)
            if topic == "execution":
                d.update(execId=f"{d['execId']}-{key}-{copy}", orderId=f"{d['orderId']}-{key}-{copy}",
                         execTime=at(d["execTime"]))
            elif topic == "order":
                d.update(orderId=f"{d['orderId']}-{key}-{copy}", updatedTime=at(d["updatedTime"]),
                         createdTime=at(d["createdTime"]))
            elif topic == "position":
                d.update(updatedTime=at(d["updatedTime"]))
            data.append(d)
        return {**frame, "id": f"{frame.get('id', 'x')}-{key}-{copy}",
                "creationTime": int(at(frame["creationTime"])), "data": data}

    def sessions_of(self, key: str) -> list[int]:
        """Ids of the connections (``Client.id``) authenticated with API key ``key`` (tests
        drop one account's private connection by them)."""
        return [sid for sid, k in self._authed.items() if k == key]

    def private_events(self, keys: Sequence[str], copies: int, start_ts: int, end_ts: int) -> list[Event]:
        """Timeline events of private traffic: for each account key, ``copies`` copies of every
        one of :attr:`private_frames`, spread evenly over ``[start_ts, end_ts]`` (timeline ms),
        delivered to that account's subscribed connection only (fault injection, drops
        included, applies as to public notifications). A copy is made when played: ids
        suffixed ``-{key}-t{k}``, event times = the wall clock; REST serves every copy played."""
        frames = [f for f in self.private_frames if f.get("topic") in _PRIVATE_TOPICS]
        n = max(1, copies * len(frames) - 1)
        out = []
        for key in keys:
            for i in range(copies * len(frames)):
                frame = frames[i % len(frames)]
                out.append(Event(start_ts + (end_ts - start_ts) * i // n, "private", key,
                                 (f"private{_SEP}{key}{_SEP}{frame['topic']}",), (frame, i // len(frames))))
        return out

    def _private_rest(self, method: str, query: dict[str, str], raw_query: str,
                      headers: Mapping[str, str], now_ms: int) -> tuple[int, bytes]:
        """The signed endpoints: ``X-BAPI-*`` headers checked for real (known key, timestamp
        within the receive window, the HMAC-SHA256 of ``timestamp + key + recv_window + query``),
        then execution/list and order/history (7-day rule, cursor paging, newest first),
        position/list and account/wallet-balance of the account's traffic."""
        key, ts, window, sign = (headers.get(h) for h in (
            "X-BAPI-API-KEY", "X-BAPI-TIMESTAMP", "X-BAPI-RECV-WINDOW", "X-BAPI-SIGN"))
        secret = self.accounts.get(key or "")
        if secret is None:
            return self._error(10003, "API key is invalid.", now_ms)
        try:
            ts_ms, window_ms = int(ts or ""), int(window or "5000")
        except ValueError:
            return self._error(10002, "invalid request, please check your timestamp", now_ms)
        if not ts_ms - 1000 <= now_ms <= ts_ms + window_ms:
            return self._error(10002, "invalid request, please check your server timestamp or recv_window param",
                               now_ms)
        expected = hmac.new(secret.encode(), f"{ts}{key}{window or ''}{raw_query}".encode(),
                            hashlib.sha256).hexdigest()
        if not isinstance(sign, str) or not hmac.compare_digest(sign, expected):
            return self._error(10004, "error sign! origin_string[...]", now_ms)
        everything = range(self.private_copies + self.private_rest_only)
        try:
            if method in ("execution/list", "order/history"):
                result = self._private_history(method, key, query, everything, now_ms)
            elif method == "position/list":
                category = query.get("category")
                if category == "linear" and not (query.get("symbol") or query.get("settleCoin")):
                    raise ValueError("symbol or settleCoin is required")
                latest = {}
                for msg in self._private_all(key, "position", everything):
                    for p in msg["data"]:
                        if p.get("category") == category and (
                                category != "linear" or p["symbol"].endswith(query.get("settleCoin") or p["symbol"])):
                            latest[p["symbol"]] = {k: v for k, v in p.items() if k != "category"}
                result = {"category": category, "list": list(latest.values()), "nextPageCursor": ""}
            elif method == "account/wallet-balance":
                if query.get("accountType") != "UNIFIED":
                    raise ValueError("accountType")
                wallets = [w for msg in self._private_all(key, "wallet", everything) for w in msg["data"]]
                result = {"list": [{**wallets[-1], "accountType": "UNIFIED"}] if wallets else []}
            else:
                return 404, b'{"error":"not found"}'
        except ValueError as exc:
            return self._error(10001, f"params error: {exc}", now_ms)
        return 200, _dumps({"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {},
                            "time": now_ms}).encode()

    def _private_all(self, key: str, topic: str, copies: range) -> list[dict]:
        """Every ``topic`` message of account ``key`` so far: the subscribe-time copies and the
        timeline's played ones."""
        return self.private_messages(key, topic, copies) + [
            msg for msg in self._private_ledger.get(key, ()) if msg["topic"] == topic]

    def _private_history(self, method: str, key: str, query: dict[str, str], copies: range,
                         now_ms: int) -> dict:
        category = query.get("category")
        if category not in ("linear", "option", "spot", "inverse"):
            raise ValueError("category")
        topic, time_field, limit = (("execution", "execTime", self._limit(query, 1, 100, 50))
                                    if method == "execution/list"
                                    else ("order", "updatedTime", self._limit(query, 1, 50, 20)))
        end = int(query.get("endTime") or now_ms)
        start = int(query.get("startTime") or end - 7 * 86_400_000)
        if end - start > 7 * 86_400_000 or end < start:
            raise ValueError("the time range between startTime and endTime cannot exceed 7 days")
        coin = query.get("baseCoin") or "BTC"
        entries = [d for msg in self._private_all(key, topic, copies) for d in msg["data"]
                   if d.get("category") == category and start <= int(d[time_field]) <= end
                   and (category != "option" or d["symbol"].startswith(coin + "-"))]
        entries.sort(key=lambda d: -int(d[time_field]))
        cursor = query.get("cursor") or ""
        try:
            offset = int(cursor.removeprefix("page:")) if cursor else 0
        except ValueError:
            raise ValueError("cursor") from None
        more = offset + limit < len(entries)
        return {"category": category, "list": entries[offset:offset + limit],
                "nextPageCursor": f"page:{offset + limit}" if more else ""}

    @staticmethod
    def _ack(category: str, conn_id: str, req_id: Any, op: Any, ok: list[str], refused: list[str],
             message: str) -> str:
        if category == "option":
            return _dumps({"success": not refused or bool(ok), "conn_id": conn_id,
                           "data": {"failTopics": refused, "successTopics": ok}, "type": "COMMAND_RESP"})
        return _dumps({"success": not refused, "ret_msg": message if refused else "",
                       "conn_id": conn_id, "req_id": req_id or "", "op": op})

    def heartbeat_frame(self) -> str:
        """Bybit sends no server heartbeat (clients ping); never used."""
        return '{"op":"ping"}'

    def handle_http_request(self, method: str, query: dict[str, str], raw_query: str,
                            headers: Mapping[str, str], fault: str | None,
                            received_us: int) -> tuple[int, bytes]:
        """Public market endpoints (:meth:`handle_http`) and the signed private ones."""
        if method.startswith("market/"):
            return self.handle_http(method, query, fault, received_us)
        return self._fault(fault, received_us // 1000) or self._private_rest(
            method, query, raw_query, headers, received_us // 1000)

    def _fault(self, fault: str | None, now_ms: int) -> tuple[int, bytes] | None:
        """The injected REST error: HTTP 403 (Bybit's IP ban answer) or retCode 10006."""
        if fault == "http429":
            return 403, b"access too frequent"
        if fault == "rpc":
            return self._error(10006, "Too many visits!", now_ms)
        return None

    def handle_http(self, method: str, query: dict[str, str], fault: str | None,
                    received_us: int) -> tuple[int, bytes]:
        now_ms = received_us // 1000
        failed = self._fault(fault, now_ms)
        if failed is not None:
            return failed
        handler = {"market/instruments-info": self._instruments_info,
                   "market/recent-trade": self._recent_trade,
                   "market/tickers": self._tickers_rest}.get(method)
        if handler is None:
            return 404, b'{"error":"not found"}'
        category = query.get("category")
        if category not in m.CATEGORIES:
            return self._error(10001, "params error: category", now_ms)
        try:
            result = handler(category, query)
        except ValueError as exc:
            return self._error(10001, f"params error: {exc}", now_ms)
        return 200, _dumps({"retCode": 0, "retMsg": "OK", "result": {"category": category, **result},
                            "retExtInfo": {}, "time": now_ms}).encode()

    @staticmethod
    def _error(code: int, message: str, now_ms: int) -> tuple[int, bytes]:
        return 200, _dumps({"retCode": code, "retMsg": message, "result": {}, "retExtInfo": {},
                            "time": now_ms}).encode()

    @staticmethod
    def _limit(query: dict[str, str], low: int, high: int, default: int) -> int:
        try:
            limit = int(query.get("limit") or default)
        except ValueError:
            raise ValueError("limit") from None
        if not low <= limit <= high:
            raise ValueError(f"limit must be in [{low},{high}]")
        return limit

    def _instruments_info(self, category: str, query: dict[str, str]) -> dict:
        infos = self.instruments[category]
        if category == "option":
            coin = query.get("baseCoin") or "BTC"
            infos = [i for i in infos if i.get("baseCoin") == coin]
        if query.get("symbol"):
            infos = [i for i in infos if i.get("symbol") == query["symbol"]]
        if category == "spot":
            return {"list": infos, "nextPageCursor": ""}
        limit = self._limit(query, 1, 1000, 500)
        cursor = query.get("cursor") or ""
        try:
            start = int(cursor.removeprefix("next:")) if cursor else 0
        except ValueError:
            raise ValueError("cursor") from None
        page = infos[start:start + limit]
        more = start + limit < len(infos)
        return {"list": page, "nextPageCursor": f"next:{start + limit}" if more else ""}

    def _recent_trade(self, category: str, query: dict[str, str]) -> dict:
        limit = (self._limit(query, 1, 60, 60) if category == "spot"
                 else self._limit(query, 1, RECENT_TRADES_LIMIT[category], 500))
        symbol = query.get("symbol")
        if category == "option" and not symbol:
            coin = query.get("baseCoin") or "BTC"
            merged = [t for (c, s), q in self.trades.items() if c == "option" and s.startswith(coin + "-")
                      for t in q]
            merged.sort(key=lambda t: int(t["time"]))
        elif not symbol:
            raise ValueError("symbol is required")
        else:
            merged = list(self.trades.get((category, symbol), ()))
        return {"list": merged[::-1][:limit]}

    def _tickers_rest(self, category: str, query: dict[str, str]) -> dict:
        out = []
        for (c, symbol), state in self.tickers.items():
            if c != category or (query.get("symbol") and symbol != query["symbol"]):
                continue
            if category == "option" and not symbol.startswith((query.get("baseCoin") or "BTC") + "-"):
                continue
            out.append(dict(state))
        return {"list": out}


def _shift(msg: dict, shift_ms: int, suffix: str) -> dict:
    """A copy of a ``tickers``/``publicTrade`` message with every timestamp moved by ``shift_ms``
    and trade ids suffixed (loops and aligned trade sources)."""
    out = dict(msg)
    out["ts"] = msg["ts"] + shift_ms
    if "id" in out:
        out["id"] = f"{out['id']}{suffix}"
    if isinstance(msg.get("data"), list):
        out["data"] = [{**t, "T": t["T"] + shift_ms, "i": t["i"] + suffix} for t in msg["data"]]
    return out
