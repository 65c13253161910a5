"""Kraken spot emulation for the generic emulator (:mod:`collector_daemon.emulator`): WS v2 at
``/v2`` (``trade``, ``ohlc``, ``status``, ping/pong, one ack per symbol) and REST ``/0/public``
``Trades`` (``since`` cursor in ns, ``last``), ``OHLC`` (the latest 720 entries whatever ``since``
says), ``AssetPairs``, with Kraken's rate-limit errors; replaying real data from
``../shared/data/real/kraken`` (PROVENANCE.md there).

Sources (``tickvault emulate --venue kraken SOURCE [--trades V2_FRAMES]``):

* a REST ``Trades`` answer (``nautilus_test_data/http_trades.json``: 1,000 real XBTUSDT trades):
  each group of trades with the same time becomes one v2 ``trade`` update (symbol from the pair's
  ``wsname``, ``b/s`` -> buy/sell, ``m/l`` -> market/limit, time to RFC 3339 µs, the real
  ``trade_id``). ``http_ohlc.json`` and ``http_asset_pairs.json`` next to it are read too: every
  one-minute candle becomes an ``ohlc`` update at the end of its minute (its final state), and
  AssetPairs is served from the real answer;
* a cryptofeed v1 capture (``*.jsonl.gz``, the 2021-04-05 one): its ``trade`` arrays re-expressed
  as v2 frames. v1 has no trade ids, so ids are assigned per pair in order from 1, and every such
  frame carries ``"tickvault_converted": "ws-v1 trade array; trade_id assigned in order"``;
* v2 frames, one JSON object per line (tardis-node's test frames, Nautilus' ``ws_*.json``):
  ``trade`` and ``ohlc`` frames as they are.

Pairs without a real AssetPairs entry get one derived from their symbol (``rest_name`` =
base + quote, ``wsname`` with XBT for BTC), marked ``"tickvault_derived": true``.

The status channel: the first request of a connection is answered after a ``status`` update
(``system`` = :attr:`KrakenEmulation.system_status`, ``online`` unless a test says otherwise).
``Faults.rest_errors`` alternates ``EAPI:Rate limit exceeded`` (HTTP 200) and HTTP 429 with
``EGeneral:Too many requests``. :attr:`KrakenEmulation.withheld` (``(symbol, trade_id)``) are
published to REST but left out of the WebSocket frames: a hole in the trade ids, as when the
exchange's stream loses trades. Loop k > 0 shifts times by whole minutes past the span and trade
ids by k x the pair's id span (ids stay sequential across loops).
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector_daemon.emulator.replay import read_capture
from collector_daemon.emulator.venue import Event, Session, VenueEmulation
from collector_daemon.venues.kraken import messages as m
from collector_daemon.venues.kraken.protocol import channel_name, split_channel
from collector_daemon.venues.kraken.rest import OHLC_LIMIT

TRADES_PAGE = 1000
CONVERTED = "ws-v1 trade array; trade_id assigned in order"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _ohlc_frame(symbol: str, c: list, kind: str = "update") -> dict:
    """A v2 ohlc frame of a REST OHLC row ``[time, o, h, l, c, vwap, volume, count]``."""
    return {"channel": "ohlc", "type": kind, "data": [{
        "symbol": symbol, "open": float(c[1]), "high": float(c[2]), "low": float(c[3]),
        "close": float(c[4]), "vwap": float(c[5]), "trades": int(c[7]), "volume": float(c[6]),
        "interval_begin": m.iso_us(int(c[0]) * 1_000_000)[:-1] + "000Z", "interval": 1}]}


class KrakenEmulation(VenueEmulation):
    """Kraken spot WS v2 + REST (module docstring)."""

    name = "kraken"
    ws_path = "/v2"
    rest_prefix = "/0/public"
    malformed_kinds = ("truncated", "not_json", "wrong_types", "missing_fields", "unknown_channel",
                       "binary", "oversized")

    def __init__(self, fanout: int = 1, churn: bool = False) -> None:
        super().__init__(fanout, churn)
        #: REST pair key -> AssetPairs entry
        self.asset_pairs: dict[str, dict] = {}
        #: v2 symbol -> REST pair key
        self.rest_names: dict[str, str] = {}
        #: symbol -> published trades as (ns, REST row), in order
        self.trades: dict[str, list[tuple[int, list]]] = {}
        self._trade_ns: dict[str, list[int]] = {}
        #: (symbol, interval) -> published candles as REST rows, by time
        self.candles: dict[tuple[str, int], dict[int, list]] = {}
        #: (symbol, trade_id) published but never sent over the WebSocket
        self.withheld: set[tuple[str, int]] = set()
        self.system_status = "online"
        #: trades per REST Trades page (Kraken: 1,000; tests page smaller)
        self.trades_page = TRADES_PAGE
        self._span_ms = 0
        self._id_span: dict[str, int] = {}
        self._greeted: set[int] = set()

    # --- timeline -------------------------------------------------------------------------------

    def load(self, capture: Path, trades: Path | None, align_trades: bool = False) -> list[Event]:
        """Events of ``capture`` (module docstring) and of the v2 frames in ``trades``."""
        frames: list[dict] = []
        name = capture.name
        if name.endswith(".json"):
            frames += self._rest_source(capture)
        elif name.endswith(".jsonl.gz"):
            frames += self._v1_capture(capture)
        else:
            frames += self._v2_frames(capture)
        if trades is not None:
            extra = self._v2_frames(trades)
            if align_trades and frames and extra:
                shift = _frame_us(frames[0]) - _frame_us(extra[0])
                extra = [_shift(f, shift, {}) for f in extra]
            frames += extra
        events = [self._event(f) for f in frames]
        events.sort(key=lambda e: e.ts)
        for e in events:
            for symbol in _symbols(e.data):
                if symbol not in self.rest_names:
                    self._derive_pair(symbol)
        if events:
            self._span_ms = events[-1].ts - events[0].ts
        ids: dict[str, list[int]] = {}
        for e in events:
            for symbol, tid in e.trade_ids:
                ids.setdefault(symbol, []).append(int(tid))
        self._id_span = {s: max(v) - min(v) + 1 for s, v in ids.items()}
        return events

    def _rest_source(self, path: Path) -> list[dict]:
        body = json.loads(path.read_text())["result"]
        pairs_file = path.with_name("http_asset_pairs.json")
        if pairs_file.exists():
            for key, entry in json.loads(pairs_file.read_text())["result"].items():
                self._add_pair(key, entry)
        frames = []
        for key, rows in body.items():
            if key == "last":
                continue
            entry = self.asset_pairs.get(key) or self._derive_pair(key[:3] + "/" + key[3:])
            symbol = m.v2_symbol(entry["wsname"])
            groups: dict[float, list] = {}
            for r in rows:
                groups.setdefault(r[2], []).append(r)
            for ts, group in groups.items():
                frames.append({"channel": "trade", "type": "update", "data": [{
                    "symbol": symbol, "side": m.SIDES[r[3]], "price": float(r[0]), "qty": float(r[1]),
                    "ord_type": m.ORD_TYPES[r[4]], "trade_id": r[6],
                    "timestamp": m.iso_us(round(ts * 1_000_000))} for r in group]})
        ohlc_file = path.with_name("http_ohlc.json")
        if ohlc_file.exists():
            for key, rows in json.loads(ohlc_file.read_text())["result"].items():
                if key == "last" or key not in self.asset_pairs:
                    continue
                symbol = m.v2_symbol(self.asset_pairs[key]["wsname"])
                frames += [_ohlc_frame(symbol, c) for c in rows]
        return frames

    def _v1_capture(self, path: Path) -> list[dict]:
        frames, next_id = [], {}
        for rec in read_capture(path):
            if rec.dir != "recv" or not rec.raw or not rec.raw.startswith("["):
                continue
            msg = json.loads(rec.raw)
            if len(msg) != 4 or msg[2] != "trade":
                continue
            symbol = m.v2_symbol(msg[3])
            data = []
            for price, volume, ts, side, ord_type, _misc in msg[1]:
                next_id[symbol] = next_id.get(symbol, 0) + 1
                data.append({"symbol": symbol, "side": m.SIDES[side], "price": float(price),
                             "qty": float(volume), "ord_type": m.ORD_TYPES[ord_type],
                             "trade_id": next_id[symbol],
                             "timestamp": m.iso_us(round(float(ts) * 1_000_000))})
            frames.append({"channel": "trade", "type": "update", "data": data,
                           "tickvault_converted": CONVERTED})
        return frames

    @staticmethod
    def _v2_frames(path: Path) -> list[dict]:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
        try:   # one pretty-printed frame (Nautilus' ws_*.json) or one frame per line
            items = [json.loads(text)]
        except ValueError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [f for f in items if isinstance(f, dict) and f.get("channel") in ("trade", "ohlc")
                and f.get("data")]

    def _add_pair(self, key: str, entry: dict) -> dict:
        self.asset_pairs[key] = entry
        self.rest_names[m.v2_symbol(entry["wsname"])] = key
        return entry

    def _derive_pair(self, symbol: str) -> dict:
        inverse = {v: k for k, v in m.V2_ASSET_NAMES.items()}
        base, quote = symbol.split("/")
        wsname = f"{inverse.get(base, base)}/{inverse.get(quote, quote)}"
        key = wsname.replace("/", "")
        return self._add_pair(key, {"altname": key, "wsname": wsname, "base": base, "quote": quote,
                                    "status": "online", "tickvault_derived": True})

    def _event(self, frame: dict) -> Event:
        symbol = frame["data"][0]["symbol"]
        if frame["channel"] == "trade":
            ids = tuple((d["symbol"], str(d["trade_id"])) for d in frame["data"])
            return Event(_frame_us(frame) // 1000, "trades", symbol, (channel_name("trade", symbol),),
                         frame, ids)
        c = frame["data"][0]
        ts = m.parse_ts_us(c["interval_begin"]) // 1000 + c["interval"] * 60_000 - 1
        return Event(ts, "ohlc", symbol, (channel_name("ohlc", symbol, c["interval"]),), frame)

    def instantiate(self, event: Event, loop_index: int) -> Sequence[Event]:
        if loop_index == 0:
            return (event,)
        shift_us = loop_index * math.ceil((self._span_ms + 1) / 60_000) * 60_000_000
        ids = {s: loop_index * span for s, span in self._id_span.items()}
        data = _shift(event.data, shift_us, ids)
        trade_ids = tuple((s, str(int(t) + ids.get(s, 0))) for s, t in event.trade_ids)
        return (Event(event.ts + shift_us // 1000, event.kind, event.instrument, event.routes, data,
                      trade_ids),)

    def publish(self, event: Event) -> None:
        if event.kind == "trades":
            for d in event.data["data"]:
                us = m.parse_ts_us(d["timestamp"])
                row = [f"{d['price']:.10f}".rstrip("0"), f"{d['qty']:.8f}", us / 1e6,
                       d["side"][0], d["ord_type"][0] if d.get("ord_type") else "l", "", d["trade_id"]]
                self.trades.setdefault(d["symbol"], []).append((us * 1000, row))
                self._trade_ns.setdefault(d["symbol"], []).append(us * 1000)
            return
        for c in event.data["data"]:
            begin = m.parse_ts_us(c["interval_begin"]) // 1_000_000
            self.candles.setdefault((c["symbol"], c["interval"]), {})[begin] = [
                begin, str(c["open"]), str(c["high"]), str(c["low"]), str(c["close"]),
                str(c.get("vwap")), str(c["volume"]), c["trades"]]

    # --- channels and frames --------------------------------------------------------------------

    def route(self, channel: str) -> str | None:
        try:
            kind, interval, symbol = split_channel(channel)
        except ValueError:
            return None
        if symbol not in self.rest_names or kind not in ("trade", "ohlc"):
            return None
        if kind == "ohlc" and interval not in m.OHLC_INTERVALS:
            return None
        return channel

    def channel_subject(self, channel: str) -> tuple[str, str | None]:
        kind, _, symbol = split_channel(channel)
        return ("trades" if kind == "trade" else "ohlc"), symbol

    def frame(self, channel: str, event: Event) -> bytes:
        if event.kind == "trades" and self.withheld:
            data = [d for d in event.data["data"] if (d["symbol"], d["trade_id"]) not in self.withheld]
            if len(data) != len(event.data["data"]):
                return (_dumps({**event.data, "data": data}) if data else '{"channel":"heartbeat"}').encode()
        if event.encoded is None:
            event.encoded = _dumps(event.data).encode()
        return event.encoded

    def malformed_frame(self, kind: str, channel: str, event: Event,
                        oversize_bytes: int) -> tuple[bytes, bool]:
        text = self.frame(channel, event).decode()
        msg = json.loads(text)
        data = msg.get("data") if isinstance(msg.get("data"), list) and msg.get("data") else None
        if kind == "truncated":
            return text[: max(1, len(text) // 2)].encode(), False
        if kind == "not_json":
            return b"<html>502 Bad Gateway</html>", False
        if kind == "wrong_types" and data:
            data[0]["price" if "price" in data[0] else "open"] = "abc"
            return _dumps(msg).encode(), False
        if kind == "missing_fields" and data:
            data[0].pop("timestamp" if "timestamp" in data[0] else "interval_begin", None)
            return _dumps(msg).encode(), False
        if kind == "binary":
            return text.encode()[:64], True
        if kind == "oversized":
            return _dumps({"channel": msg.get("channel"), "pad": "x" * oversize_bytes}).encode(), False
        return _dumps({**msg, "channel": "nosuch"}).encode(), False

    # --- requests -------------------------------------------------------------------------------

    def handle_message(self, session: Session, message: str | bytes, received_us: int) -> list[str]:
        out = []
        if session.id not in self._greeted:   # Kraken sends the status on connect
            self._greeted.add(session.id)
            out.append(_dumps({"channel": "status", "type": "update", "data": [{
                "api_version": "v2", "connection_id": session.id, "system": self.system_status,
                "version": "2.0.0"}]}))
        try:
            msg = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return out + [_dumps({"error": "Malformed request", "success": False})]
        if not isinstance(msg, dict):
            msg = {}
        method, req_id = msg.get("method"), msg.get("req_id")
        times = {"time_in": m.iso_us(received_us), "time_out": m.iso_us(received_us)}
        if method == "ping":
            return out + [_dumps({"method": "pong", "req_id": req_id, **times})]
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        kind, symbols, interval = params.get("channel"), params.get("symbol"), params.get("interval")
        if method not in ("subscribe", "unsubscribe") or not isinstance(symbols, list):
            return out + [_dumps({"error": f"Unsupported request {str(method)[:40]}", "method": method,
                                  "success": False, "req_id": req_id, **times})]
        channels = [channel_name(kind, s, interval if kind == "ohlc" else None) for s in symbols]
        done = set(session.subscribe(channels) if method == "subscribe" else session.unsubscribe(channels))
        for symbol, channel in zip(symbols, channels):
            if channel in done:
                result = {"channel": kind, "symbol": symbol}
                if kind == "ohlc":
                    result["interval"] = interval
                out.append(_dumps({"method": method, "result": result, "success": True,
                                   "req_id": req_id, **times}))
                snapshot = self._candle_snapshot(symbol, interval) if kind == "ohlc" and \
                    method == "subscribe" else None
                if snapshot is not None:
                    out.append(_dumps(snapshot))
            else:
                out.append(_dumps({"error": f"Currency pair not supported {symbol}", "method": method,
                                   "success": False, "symbol": symbol, "req_id": req_id, **times}))
        return out

    def _candle_snapshot(self, symbol: str, interval: int) -> dict | None:
        rows = self.candles.get((symbol, interval))
        if not rows:
            return None
        latest = rows[max(rows)]
        frame = _ohlc_frame(symbol, latest, "snapshot")
        frame["data"][0]["interval"] = interval
        return frame

    def heartbeat_frame(self) -> str:
        """Kraken's heartbeat channel frame (no answer expected)."""
        return '{"channel":"heartbeat"}'

    def handle_http(self, method: str, query: dict[str, str], fault: str | None,
                    received_us: int) -> tuple[int, bytes]:
        if fault == "http429":
            return 429, _dumps({"error": ["EGeneral:Too many requests"]}).encode()
        if fault == "rpc":
            return 200, _dumps({"error": ["EAPI:Rate limit exceeded"]}).encode()
        if method == "AssetPairs":
            return self._ok(self.asset_pairs)
        if method not in ("Trades", "OHLC"):
            return 404, _dumps({"error": ["EGeneral:Unknown method"]}).encode()
        pair = query.get("pair", "")
        key = pair if pair in self.asset_pairs else next(
            (k for k, v in self.asset_pairs.items() if v.get("altname") == pair), None)
        if key is None:
            return 200, _dumps({"error": ["EQuery:Unknown asset pair"]}).encode()
        symbol = m.v2_symbol(self.asset_pairs[key]["wsname"])
        try:
            since = int(query.get("since") or 0)
            interval = int(query.get("interval") or 1)
        except ValueError:
            return 200, _dumps({"error": ["EGeneral:Invalid arguments"]}).encode()
        if method == "Trades":
            return self._ok(self._trades(key, symbol, since))
        rows = self.candles.get((symbol, interval), {})
        latest = [rows[t] for t in sorted(rows)][-OHLC_LIMIT:]   # older ones cannot be fetched
        page = [r for r in latest if r[0] > since] if since else latest
        return self._ok({key: page, "last": latest[-2][0] if len(latest) > 1 else 0})

    def _trades(self, key: str, symbol: str, since_ns: int) -> dict:
        """Up to 1,000 trades at or after ``since_ns``; ``last``: the newest one's time (ns)."""
        times = self._trade_ns.get(symbol, [])
        start = bisect.bisect_left(times, since_ns) if since_ns else 0
        page = self.trades.get(symbol, [])[start:start + self.trades_page]
        last = page[-1][0] if page else since_ns
        return {key: [row for _, row in page], "last": str(last)}

    @staticmethod
    def _ok(result: dict) -> tuple[int, bytes]:
        return 200, _dumps({"error": [], "result": result}).encode()


def _frame_us(frame: dict) -> int:
    d = frame["data"][0]
    return m.parse_ts_us(d["timestamp"] if "timestamp" in d else d["interval_begin"])


def _symbols(frame: dict) -> set[str]:
    return {d["symbol"] for d in frame["data"]}


def _shift(frame: dict, shift_us: int, ids: dict[str, int]) -> dict:
    """A copy of a trade/ohlc frame with times moved by ``shift_us`` and trade ids by ``ids[symbol]``."""
    data = []
    for d in frame["data"]:
        d = dict(d)
        if "timestamp" in d:
            d["timestamp"] = m.iso_us(m.parse_ts_us(d["timestamp"]) + shift_us)
        if "interval_begin" in d:
            d["interval_begin"] = m.iso_us(m.parse_ts_us(d["interval_begin"]) + shift_us)
        if "trade_id" in d:
            d["trade_id"] += ids.get(d["symbol"], 0)
        data.append(d)
    return {**frame, "data": data}
