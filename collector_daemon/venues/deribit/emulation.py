"""Deribit API v2 emulation: turns captures and trade dumps into a replayable timeline and answers
Deribit's JSON-RPC 2.0 over WebSocket (``/ws/api/v2``) and HTTP (``/api/v2/public/<method>``).

Facts followed (``shared/reference/exchange-apis-and-peers.md`` section A):

* A.1 channels: ``ticker.{instrument}.{interval}``, ``book.{instrument}.{interval}``,
  ``trades.{instrument}.{interval}``, ``trades.{kind}.{currency}.{interval}``; notifications are
  ``{"jsonrpc":"2.0","method":"subscription","params":{"channel":..,"data":..}}``; trades come as an
  array (the ``100ms`` channels batch same-time trades). Exchange timestamps are ms since epoch.
* A.2 ``raw`` needs an authenticated connection (error 13778); the emulator has no auth, so ``raw``
  channels are left out of the subscribe result. A ``100ms``/``agg2`` subscription receives the
  capture's frames (recorded on ``raw``) re-channelled to the subscribed name.
* A.4 unknown channels are silently left out of the subscribe ``result``; a frame over 32 kB gets
  -32600 "request entity too large"; ``public/set_heartbeat`` (interval >= 10 s) + ``test_request``
  + close 4000 "heartbeat close"; every RPC response carries ``usIn``/``usOut``/``usDiff`` (µs);
  running out of credits is error 10028 ``too_many_requests``.
* A.5 REST: ``get_instruments``, ``get_book_summary_by_currency``, the ``get_last_trades_*`` family
  (``count`` default 10, max 1000; ``sorting`` asc|desc|default; result ``{trades, has_more}``).

Replay semantics specific to Deribit:

* Timeline clock: capture frames keep their recorded order; their clock is the running maximum of
  the frames' exchange ``timestamp`` (book snapshots carry the older "last change" time). Trades
  from a trade source are merged in by ``timestamp``; same-timestamp trades of one instrument form
  one notification.
* Trade sources without ``trade_seq`` (e.g. the cyri113 SQLite CSV) get one **derived by the
  emulator**: per instrument, 1, 2, 3, ... in (timestamp, trade_id) order. Fields the source lacks
  (``tick_direction``, ``iv`` of futures, ...) are omitted, never invented.
* Loop k > 0 shifts every exchange timestamp by k x (span + 1 ms) (span over all timestamps of the
  timeline), trade ids (numeric suffix, prefix kept: ``ETH-12345``) by k x fanout x id-span,
  ``trade_seq`` by k x (per-instrument seq span) and book ``change_id``/``prev_change_id`` by
  k x change-id span, so every loop is new, valid data with unique keys.
* Fan-out F: every option instrument gets F - 1 copies whose strike is re-keyed upwards to the next
  unused strikes (``ETH-9APR21-1950-C`` → ``ETH-9APR21-1951-C`` ...); copy j's trade ids are shifted
  by j x id-span.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from collector_daemon.emulator.replay import open_text, read_capture
from collector_daemon.emulator.venue import Event, RpcError, Session, VenueEmulation

_encode = msgspec.json.encode

#: Intervals an unauthenticated connection may subscribe (A.2); ``raw`` is refused.
ALLOWED_INTERVALS = frozenset({"100ms", "agg2"})
#: ``{kind}`` of ``trades.{kind}.{currency}.{interval}``.
TRADE_KINDS = frozenset(
    {"option", "future", "spot", "future_combo", "option_combo", "combo", "any"})
#: ``{currency}`` of ``trades.{kind}.{currency}.{interval}`` (plus those seen in the data).
CURRENCIES = frozenset({"BTC", "ETH", "USDC", "USDT", "EURR", "any"})
#: Deribit's ``expiration_timestamp`` of perpetuals (year 3000).
PERPETUAL_EXPIRY_MS = 32503708800000
#: Largest WebSocket request Deribit accepts (A.4).
MAX_REQUEST_BYTES = 32 * 1024
#: ``count`` limits of the trade-history methods (A.5).
DEFAULT_COUNT, MAX_COUNT = 10, 1000

_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_EXPIRY_RE = re.compile(r"^(\d{1,2})([A-Z]{3})(\d{2})$")
_ID_RE = re.compile(r"^(.*?)(\d+)$")
_LITERAL = "__emulator_literal__"

# --------------------------------------------------------------------------------------------------
# Instrument names
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """What an instrument name tells (Deribit naming: ``ETH-9APR21-1950-C``, ``BTC-PERPETUAL``,
    ``ETH_USDC-PERPETUAL``, ``BTC-24SEP21``, combos such as ``BTC-FS-29MAR24_PERP``).

    Attributes:
        name: instrument name.
        kind: ``option | future | spot | future_combo | option_combo``.
        base: base currency (``ETH``).
        quote: quote currency: the base for inverse instruments, e.g. ``USDC`` for linear ones.
        currency: the currency Deribit files it under (``get_instruments(currency=..)`` and
            ``trades.{kind}.{currency}``): the base for inverse, the quote for linear.
        expiry_ms: expiration, 08:00 UTC of the expiry date, ms since epoch; perpetuals
            ``PERPETUAL_EXPIRY_MS``; None when unknown (combos, spot).
        strike: option strike (``1d5`` in a name means 1.5), None for non-options.
        option_type: ``call | put`` or None.
    """

    name: str
    kind: str
    base: str
    quote: str
    currency: str
    expiry_ms: int | None = None
    strike: float | None = None
    option_type: str | None = None

    @property
    def linear(self) -> bool:
        return self.base != self.quote


def _expiry_ms(text: str) -> int | None:
    m = _EXPIRY_RE.match(text)
    if m is None or m.group(2) not in _MONTHS:
        return None
    dt = datetime(2000 + int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)), 8, tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def parse_instrument(name: str) -> InstrumentInfo:
    """Parse a Deribit instrument name (see :class:`InstrumentInfo`)."""
    parts = name.split("-")
    base, _, quote = parts[0].partition("_")
    quote = quote or base
    currency = quote if quote != base else base
    if len(parts) == 1:
        return InstrumentInfo(name, "spot", base, quote, currency)
    if len(parts) == 4 and parts[3] in ("C", "P"):
        try:
            strike = float(parts[2].replace("d", "."))
        except ValueError:
            strike = None
        return InstrumentInfo(name, "option", base, quote, currency, _expiry_ms(parts[1]), strike,
                              "call" if parts[3] == "C" else "put")
    if len(parts) == 2:
        expiry = PERPETUAL_EXPIRY_MS if parts[1] == "PERPETUAL" else _expiry_ms(parts[1])
        return InstrumentInfo(name, "future", base, quote, currency, expiry)
    return InstrumentInfo(name, "future_combo" if parts[1] == "FS" else "option_combo",
                          base, quote, currency)


def _format_strike(strike: float) -> str:
    return str(int(strike)) if strike == int(strike) else repr(strike).replace(".", "d")


def _shift_id(trade_id: str, shift: int) -> str:
    """``"ETH-12345"`` shifted by 10 → ``"ETH-12355"`` (numeric strings likewise)."""
    if not shift:
        return trade_id
    m = _ID_RE.match(trade_id)
    if m is None:
        return f"{trade_id}-{shift}"
    return f"{m.group(1)}{int(m.group(2)) + shift}"


def _id_number(trade_id: Any) -> int:
    m = _ID_RE.match(str(trade_id))
    return int(m.group(2)) if m else 0


# --------------------------------------------------------------------------------------------------
# Trade sources
# --------------------------------------------------------------------------------------------------


def _csv_trade(row: dict[str, str]) -> dict[str, Any]:
    """cyri113-style CSV row (id,instrument_name,price,amount,direction,timestamp,index_price,
    mark_price,implied_volatility,created_at) → Deribit trade dict (empty cells omitted)."""
    trade: dict[str, Any] = {
        "trade_id": row["id"],
        "instrument_name": row["instrument_name"],
        "timestamp": int(row["timestamp"]),
        "price": float(row["price"]),
        "amount": float(row["amount"]),
        "direction": row["direction"],
    }
    for src, dst in (("index_price", "index_price"), ("mark_price", "mark_price"),
                     ("implied_volatility", "iv")):
        value = (row.get(src) or "").strip()
        if value:
            trade[dst] = float(value)
    return trade


def load_trade_source(path: Path) -> list[dict[str, Any]]:
    """Read a trade source into Deribit trade dicts (source order, duplicates removed).

    Accepted: a JSON ``get_last_trades_*`` response (full JSON-RPC envelope, its ``result``
    object ``{"trades": [...], "has_more": ..}``, or a bare list of trades), or a cyri113-style CSV.
    gzip allowed. JSON values are kept as they are; ``trade_id`` is made a string.
    """
    with open_text(path) as fh:
        text = fh.read()
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        obj: Any = json.loads(text)
        if isinstance(obj, dict) and "result" in obj:
            obj = obj["result"]
        if isinstance(obj, dict):
            obj = obj.get("trades", [])
        if not isinstance(obj, list):
            raise ValueError(f"{path}: no trade list found")
        trades = [dict(t, trade_id=str(t["trade_id"])) for t in obj if isinstance(t, dict)]
    else:
        trades = [_csv_trade(row) for row in csv.DictReader(text.splitlines())]
    seen: set[tuple[str, str]] = set()
    out = []
    for t in trades:
        key = (t["instrument_name"], t["trade_id"])
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _ordered_with_seq(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by (timestamp, trade_seq or trade id) and derive ``trade_seq`` (1, 2, ... per
    instrument) for instruments whose trades lack it."""
    trades = sorted(trades, key=lambda t: (t["timestamp"], t.get("trade_seq", -1),
                                           _id_number(t["trade_id"])))
    lacking = {t["instrument_name"] for t in trades if "trade_seq" not in t}
    counters: dict[str, int] = {}
    for t in trades:
        name = t["instrument_name"]
        if name in lacking:
            counters[name] = counters.get(name, 0) + 1
            t["trade_seq"] = counters[name]
    return trades


def _group_trades(trades: Iterable[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """Consecutive same-timestamp trades → one group per instrument, in first-seen order."""
    out = []
    for ts, same_ts in itertools.groupby(trades, key=lambda t: t["timestamp"]):
        groups: dict[str, list[dict[str, Any]]] = {}
        for t in same_ts:
            groups.setdefault(t["instrument_name"], []).append(t)
        out.extend((ts, name, group) for name, group in groups.items())
    return out


# --------------------------------------------------------------------------------------------------
# Parameter helpers (HTTP gives strings, WebSocket gives JSON types)
# --------------------------------------------------------------------------------------------------


def _invalid(param: str, reason: str) -> RpcError:
    return RpcError(-32602, "Invalid params", {"param": param, "reason": reason})


def _p_str(params: dict[str, Any], name: str, required: bool = False,
           choices: Iterable[str] | None = None, default: str | None = None) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(name, "must be present")
        return default
    if not isinstance(value, str) or (choices is not None and value not in choices):
        raise _invalid(name, "wrong format")
    return value


def _p_int(params: dict[str, Any], name: str, required: bool = False) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(name, "must be present")
        return None
    if isinstance(value, bool):
        raise _invalid(name, "wrong format")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _invalid(name, "wrong format") from None


def _p_bool(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(name, "wrong format")


def _p_count(params: dict[str, Any]) -> int:
    count = _p_int(params, "count")
    if count is None:
        return DEFAULT_COUNT
    if not 1 <= count <= MAX_COUNT:
        raise _invalid("count", f"must be between 1 and {MAX_COUNT}")
    return count


def _page(trades: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool], count: int,
          sorting: str) -> dict[str, Any]:
    """``{"trades", "has_more"}``: ``count`` oldest (asc) or newest (desc/default, newest first)
    of the published trades that pass ``keep``."""
    selected = [t for t in trades if keep(t)]
    page = selected[:count] if sorting == "asc" else selected[::-1][:count]
    return {"trades": page, "has_more": len(selected) > count}


def _between(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


# --------------------------------------------------------------------------------------------------
# The emulation
# --------------------------------------------------------------------------------------------------


class _Variant(Event):
    """A ticker/book event of a later loop or a fan-out copy. Its ``data`` stays None until the
    venue needs it (:meth:`DeribitEmulation._payload`); its bytes are derived from ``source``'s."""

    __slots__ = ("source", "dt", "change_shift")
    source: Event
    dt: int
    change_shift: int


class DeribitEmulation(VenueEmulation):
    """Deribit API v2 (see the module docstring for the documentation sections followed)."""

    name = "deribit"
    ws_path = "/ws/api/v2"
    rest_prefix = "/api/v2"
    malformed_kinds = (
        "truncated_json", "not_json", "timestamp_string", "price_string", "missing_fields",
        "unknown_channel", "nan_literal", "infinity_literal", "huge_number", "binary", "oversized",
    )

    def __init__(self, fanout: int = 1, churn: bool = False) -> None:
        super().__init__(fanout, churn)
        self._clock = 0                                # replay time of the newest event (ms)
        self._windows: dict[str, tuple[int, int]] = {}  # churn: copy -> listed [from, to] (ms)
        self._info: dict[str, InstrumentInfo] = {}
        self._first_seen: dict[str, int] = {}
        self._listed: list[tuple[str, dict[str, Any]]] = []  # (currency, get_instruments row)
        # option -> [(copy name, its trade routes)]
        self._copies: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        self._currencies = set(CURRENCIES)
        self._ts_shift = 0
        self._id_span = 0
        self._seq_span: dict[str, int] = {}
        self._change_span = 0
        self._instrument_rows: list[tuple[str, dict[str, Any]]] | None = None
        # published state (served by REST)
        self._latest_ticker: dict[str, Event] = {}
        self._trades_by_instrument: dict[str, list[dict[str, Any]]] = {}
        self._trades_by_currency: dict[str, list[dict[str, Any]]] = {}
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "public/get_instruments": self.get_instruments,
            "public/get_book_summary_by_currency": self.get_book_summary_by_currency,
            "public/get_last_trades_by_instrument": self.get_last_trades_by_instrument,
            "public/get_last_trades_by_instrument_and_time":
                self.get_last_trades_by_instrument_and_time,
            "public/get_last_trades_by_currency": self.get_last_trades_by_currency,
            "public/get_last_trades_by_currency_and_time":
                self.get_last_trades_by_currency_and_time,
        }

    # --- timeline -------------------------------------------------------------------------------

    def load(self, capture: Path, trades: Path | None, align_trades: bool = False) -> list[Event]:
        """Base timeline from a capture (its ``recv`` subscription notifications on ticker, book and
        trades channels; its ``get_instruments`` ``http_response`` records) and an optional trade
        source (:func:`load_trade_source`)."""
        captured: list[Event] = []
        clock: int | None = None
        for rec in read_capture(capture):
            if rec.dir == "http_response" and rec.raw and rec.url:
                self._read_http_response(rec.url, rec.raw)
                continue
            if rec.dir != "recv" or not rec.raw:
                continue
            try:
                msg = json.loads(rec.raw)
            except ValueError:
                continue
            if not isinstance(msg, dict) or msg.get("method") != "subscription":
                continue
            params = msg.get("params") or {}
            channel, data = params.get("channel"), params.get("data")
            if not isinstance(channel, str):
                continue
            prefix = channel.split(".", 1)[0]
            if prefix in ("ticker", "book") and isinstance(data, dict) \
                    and isinstance(data.get("timestamp"), int):
                name = data.get("instrument_name") or channel.split(".")[1]
                clock = data["timestamp"] if clock is None else max(clock, data["timestamp"])
                captured.append(self._event(clock, prefix, name, data))
            elif prefix == "trades" and isinstance(data, list):
                for ts, name, group in _group_trades(data):
                    clock = ts if clock is None else max(clock, ts)
                    captured.append(self._trades_event(clock, name, group))
        source = _ordered_with_seq(load_trade_source(trades)) if trades else []
        if align_trades and source and captured:
            offset = captured[0].ts - min(t["timestamp"] for t in source)
            source = [dict(t, timestamp=t["timestamp"] + offset) for t in source]
        sourced = [self._trades_event(ts, name, group) for ts, name, group in _group_trades(source)]
        events = list(heapq.merge(captured, sourced, key=lambda e: e.ts))
        self._prepare(events)
        return events

    def _read_http_response(self, url: str, raw: str) -> None:
        parts = urlsplit(url)
        if not parts.path.endswith("/get_instruments"):
            return
        currency = (parse_qs(parts.query).get("currency") or ["any"])[0]
        result = json.loads(raw).get("result")
        if isinstance(result, list):
            for row in result:
                self._listed.append((currency, row))

    def _event(self, ts: int, kind: str, name: str, data: dict[str, Any]) -> Event:
        return Event(ts, kind, name, (f"{kind}.{name}",), data)

    def _trades_event(self, ts: int, name: str, trades: list[dict[str, Any]]) -> Event:
        return Event(ts, "trades", name, self._trade_routes(name), trades,
                     tuple((name, t["trade_id"]) for t in trades))

    def _trade_routes(self, name: str) -> tuple[str, ...]:
        info = self._instrument(name)
        kinds = (info.kind, "any", "combo") if info.kind.endswith("_combo") else (info.kind, "any")
        return (f"trades.{name}",) + tuple(f"trades.{kind}.{cur}" for kind in kinds
                                           for cur in (info.currency, "any"))

    def _instrument(self, name: str) -> InstrumentInfo:
        info = self._info.get(name)
        if info is None:
            info = self._info[name] = parse_instrument(name)
        return info

    def _prepare(self, events: list[Event]) -> None:
        """Spans for loop re-keying, fan-out copies, first-seen times and the known instruments."""
        timestamps = [e.ts for e in events[:1]] + [e.ts for e in events[-1:]]
        ids: list[int] = []
        seqs: dict[str, list[int]] = {}
        change_ids: list[int] = []
        for e in events:
            self._first_seen.setdefault(e.instrument, e.ts)
            self._instrument(e.instrument)
            if e.kind == "trades":
                for t in e.data:
                    timestamps.append(t["timestamp"])
                    ids.append(_id_number(t["trade_id"]))
                    if isinstance(t.get("trade_seq"), int):
                        seqs.setdefault(e.instrument, []).append(t["trade_seq"])
            else:
                timestamps.append(e.data["timestamp"])
                if e.kind == "book":
                    change_ids.extend(e.data[k] for k in ("change_id", "prev_change_id")
                                      if isinstance(e.data.get(k), int))
        if timestamps:
            self._ts_shift = max(timestamps) - min(timestamps) + 1
        if ids:
            self._id_span = max(ids) - min(ids) + 1
        self._seq_span = {name: max(v) - min(v) + 1 for name, v in seqs.items()}
        if change_ids:
            self._change_span = max(change_ids) - min(change_ids) + 1
        for _, row in self._listed:
            self._instrument(row["instrument_name"])
        self._currencies.update(info.currency for info in self._info.values())
        if self.fanout > 1:
            self._make_copies()
            if self.churn and timestamps:
                self._churn_windows(min(timestamps), max(timestamps))

    def _churn_windows(self, first: int, last: int) -> None:
        """Copy j of F is listed during [first + (j-1)/F, first + (j+1)/F] of the timeline span:
        copies appear and expire while the replay runs (the originals stay listed). Meant for
        one loop (later loops are shifted past every window)."""
        span = max(1, last - first)
        for copies in self._copies.values():
            for j, (name, _) in enumerate(copies, 1):
                self._windows[name] = (first + (j - 1) * span // self.fanout,
                                       first + (j + 1) * span // self.fanout)

    def listing_windows(self) -> dict[str, tuple[int, int]]:
        """Churn: instrument -> (listed from, delisted after), replay ms of the first loop."""
        return dict(self._windows)

    def _listed_now(self, name: str) -> bool:
        window = self._windows.get(name)
        return window is None or window[0] <= self._clock <= window[1]

    def _make_copies(self) -> None:
        taken = set(self._info)
        for name in sorted(self._first_seen):
            info = self._info[name]
            if info.kind != "option" or info.strike is None:
                continue
            parts = name.split("-")
            copies = []
            strike = info.strike
            while len(copies) < self.fanout - 1:
                strike += 1
                copy = "-".join((parts[0], parts[1], _format_strike(strike), parts[3]))
                if copy in taken:
                    continue
                taken.add(copy)
                self._info[copy] = replace(info, name=copy, strike=strike)
                self._first_seen[copy] = self._first_seen[name]
                copies.append(copy)
            self._copies[name] = [(c, self._trade_routes(c)) for c in copies]

    def instantiate(self, event: Event, loop_index: int) -> Sequence[Event]:
        copies = self._copies.get(event.instrument)
        if loop_index == 0 and copies is None:
            return (event,)
        out = [event if loop_index == 0 else
               self._variant(event, loop_index, 0, event.instrument, event.routes)]
        for j, (name, trade_routes) in enumerate(copies or (), 1):
            window = self._windows.get(name)
            if window is not None and not window[0] <= event.ts <= window[1]:
                continue                       # churn: not listed at this time, no data
            routes = trade_routes if event.kind == "trades" else (f"{event.kind}.{name}",)
            out.append(self._variant(event, loop_index, j, name, routes))
        return out

    def _variant(self, event: Event, k: int, j: int, name: str, routes: tuple[str, ...]) -> Event:
        """``event`` in loop ``k`` as fan-out copy ``j`` (0 = the original instrument)."""
        dt = k * self._ts_shift
        if event.kind == "trades":
            seq_shift = k * self._seq_span.get(event.instrument, 0)
            id_shift = (k * self.fanout + j) * self._id_span
            trades = []
            for t in event.data:
                t = dict(t, timestamp=t["timestamp"] + dt, instrument_name=name,
                         trade_id=_shift_id(t["trade_id"], id_shift))
                if seq_shift and isinstance(t.get("trade_seq"), int):
                    t["trade_seq"] += seq_shift
                trades.append(t)
            return Event(event.ts + dt, "trades", name, routes, trades,
                         tuple((name, t["trade_id"]) for t in trades))
        variant = _Variant(event.ts + dt, event.kind, name, routes, None)
        variant.source, variant.dt = event, dt
        variant.change_shift = k * self._change_span if event.kind == "book" else 0
        return variant

    @staticmethod
    def _payload(event: Event) -> Any:
        """``event.data``, materialising it first for a lazy :class:`_Variant`."""
        if event.data is None and isinstance(event, _Variant):
            original = event.source.data
            data = dict(original, timestamp=original["timestamp"] + event.dt)
            if "instrument_name" in data:
                data["instrument_name"] = event.instrument
            if event.change_shift:
                for key in ("change_id", "prev_change_id"):
                    if isinstance(data.get(key), int):
                        data[key] += event.change_shift
            event.data = data
        return event.data

    def _encoded(self, event: Event) -> bytes:
        """Serialised payload, cached on the event. A :class:`_Variant` is derived from its
        source's bytes by substituting the changed top-level scalars (each token must occur exactly
        once, else it is encoded normally): several times cheaper than encoding a ticker again."""
        encoded = event.encoded
        if encoded is not None:
            return encoded
        if isinstance(event, _Variant):
            source = event.source
            original = source.data
            encoded = self._encoded(source)
            subs = [(b'"timestamp":%d' % original["timestamp"],
                     b'"timestamp":%d' % (original["timestamp"] + event.dt))]
            if event.instrument != source.instrument and "instrument_name" in original:
                subs.append((b'"instrument_name":"%s"' % source.instrument.encode(),
                             b'"instrument_name":"%s"' % event.instrument.encode()))
            if event.change_shift:
                subs.extend((b'"%s":%d' % (key.encode(), original[key]),
                             b'"%s":%d' % (key.encode(), original[key] + event.change_shift))
                            for key in ("change_id", "prev_change_id")
                            if isinstance(original.get(key), int))
            for before, after in subs:
                if before == after:
                    continue
                if encoded.count(before) != 1:
                    encoded = _encode(self._payload(event))
                    break
                encoded = encoded.replace(before, after)
        else:
            encoded = _encode(event.data)
        event.encoded = encoded
        return encoded

    def publish(self, event: Event) -> None:
        self._clock = max(self._clock, event.ts)
        if event.kind == "ticker":
            self._latest_ticker[event.instrument] = event
        elif event.kind == "trades":
            self._trades_by_instrument.setdefault(event.instrument, []).extend(event.data)
            currency = self._info[event.instrument].currency
            self._trades_by_currency.setdefault(currency, []).extend(event.data)

    # --- channels and frames --------------------------------------------------------------------

    def route(self, channel: str) -> str | None:
        parts = channel.split(".")
        if len(parts) == 3 and parts[0] in ("ticker", "book", "trades") \
                and parts[2] in ALLOWED_INTERVALS and parts[1] in self._info:
            return f"{parts[0]}.{parts[1]}"
        if len(parts) == 4 and parts[0] == "trades" and parts[1] in TRADE_KINDS \
                and parts[2] in self._currencies and parts[3] in ALLOWED_INTERVALS:
            return f"trades.{parts[1]}.{parts[2]}"
        return None

    def channel_subject(self, channel: str) -> tuple[str, str | None]:
        parts = channel.split(".")
        if len(parts) == 3:
            return parts[0], parts[1]
        return parts[0], None

    def frame(self, channel: str, event: Event) -> bytes:
        return b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"%s","data":%s}}' % (
            channel.encode(), event.encoded or self._encoded(event))

    def _notification(self, channel: str, data: Any) -> bytes:
        return b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"%s","data":%s}}' % (
            channel.encode(), _encode(data))

    def malformed_frame(
        self, kind: str, channel: str, event: Event, oversize_bytes: int
    ) -> tuple[bytes, bool]:
        """Malformed frames of :attr:`malformed_kinds`, built from ``event``'s real payload:
        ``truncated_json`` (first half of a notification), ``not_json`` (an HTML error page),
        ``timestamp_string`` (``"timestamp":"abc"``), ``price_string`` (a price as a JSON string),
        ``missing_fields`` (no ``timestamp``/``instrument_name``/``trade_id``), ``unknown_channel``
        (a channel nobody subscribed), ``nan_literal`` / ``infinity_literal`` (bare ``NaN`` /
        ``Infinity``), ``huge_number`` (a 40-digit timestamp), ``binary`` (a binary frame) and
        ``oversized`` (a notification padded to ``oversize_bytes`` without required fields)."""
        if kind == "not_json":
            return b"<html><body><h1>502 Bad Gateway</h1></body></html>", False
        if kind == "truncated_json":
            whole = self.frame(channel, event)
            return whole[: len(whole) // 2].decode("utf-8", "ignore").encode(), False
        if kind == "binary":
            return b"\x00\xff\xfe\x80" + self.frame(channel, event)[:64], True
        if kind == "oversized":
            data = {"instrument_name": event.instrument, "padding": "x" * oversize_bytes}
            return self._notification(channel, data), False
        if kind == "unknown_channel":
            prefix, _, interval = channel.partition(".")
            return self._notification(f"{prefix}.NOSUCH-1JAN70-1-C.{interval.rpartition('.')[2]}",
                                      self._payload(event)), False
        payload = self._payload(event)
        first = dict(payload[0] if isinstance(payload, list) else payload)
        price_field = next((f for f in ("price", "best_bid_price", "mark_price", "bids")
                            if first.get(f) is not None), "mark_price")
        literal = b""
        if kind == "timestamp_string":
            first["timestamp"] = "abc"
        elif kind == "price_string":
            first[price_field] = str(first.get(price_field))
        elif kind == "missing_fields":
            for f in ("timestamp", "instrument_name", "trade_id"):
                first.pop(f, None)
        elif kind in ("nan_literal", "infinity_literal", "huge_number"):
            target = "timestamp" if kind == "huge_number" else price_field
            first[target] = _LITERAL
            literal = {"nan_literal": b"NaN", "infinity_literal": b"Infinity",
                       "huge_number": b"1" + b"0" * 39}[kind]
        else:
            raise ValueError(f"unknown malformed kind {kind!r}")
        data: Any = [first, *payload[1:]] if isinstance(payload, list) else first
        frame = self._notification(channel, data)
        if literal:
            frame = frame.replace(b'"%s"' % _LITERAL.encode(), literal)
        return frame, False

    # --- requests -------------------------------------------------------------------------------

    def heartbeat_frame(self) -> str:
        return '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'

    def handle_message(self, session: Session, message: str | bytes, received_us: int) -> list[str]:
        """JSON-RPC 2.0 over WebSocket: ``public/subscribe``, ``public/unsubscribe``,
        ``public/unsubscribe_all``, ``public/set_heartbeat``, ``public/disable_heartbeat``,
        ``public/test``, ``public/hello``, ``public/get_time`` and the REST data methods."""
        try:
            request = json.loads(message)
        except ValueError:
            request = None
        request_id = request.get("id") if isinstance(request, dict) else None
        if len(message) > MAX_REQUEST_BYTES:  # the id is echoed when the request parses
            return [self._response(request_id, received_us, error=RpcError(
                -32600, "request entity too large"))]
        if request is None:
            return [self._response(None, received_us, error=RpcError(-32700, "Parse error"))]
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return [self._response(request_id, received_us,
                                   error=RpcError(-32600, "Invalid Request"))]
        try:
            result = self._call_ws(session, request["method"], request.get("params") or {})
        except RpcError as exc:
            return [self._response(request_id, received_us, error=exc)]
        return [self._response(request_id, received_us, result=result)]

    def _call_ws(self, session: Session, method: str, params: Any) -> Any:
        if not isinstance(params, dict):
            raise RpcError(-32602, "Invalid params")
        if method in ("public/subscribe", "public/unsubscribe"):
            channels = params.get("channels")
            if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
                raise _invalid("channels", "must be a list of strings")
            if method == "public/subscribe":
                return session.subscribe(channels)
            return session.unsubscribe(channels)
        if method == "public/unsubscribe_all":
            session.unsubscribe_all()
            return "ok"
        if method == "public/set_heartbeat":
            interval = params.get("interval")
            if isinstance(interval, bool) or not isinstance(interval, int | float) \
                    or interval < 10:
                raise _invalid("interval", "must be a number >= 10")
            session.set_heartbeat(float(interval))
            return "ok"
        if method == "public/disable_heartbeat":
            session.set_heartbeat(None)
            return "ok"
        if method == "public/test":
            session.heartbeat_answered()
            return {"version": "emulator"}
        if method == "public/hello":
            return {"version": "emulator"}
        if method == "public/get_time":
            return int(time.time() * 1000)
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(-32601, "Method not found")
        if session.rest_fault():
            raise RpcError(10028, "too_many_requests", http_status=429)
        return handler(params)

    def handle_http(
        self, method: str, query: dict[str, str], fault: str | None, received_us: int
    ) -> tuple[int, bytes]:
        """``GET /api/v2/public/<method>?<params>`` → the JSON-RPC-shaped body Deribit sends
        (``{"jsonrpc","result","usIn","usOut","usDiff","testnet"}``; errors with HTTP 400, the
        rate-limit fault with 10028 over HTTP 400 or a plain HTTP 429)."""
        try:
            if method == "public/get_time":
                result: Any = int(time.time() * 1000)
            else:
                handler = self._methods.get(method)
                if handler is None:
                    raise RpcError(-32601, "Method not found")
                if fault == "http429":
                    raise RpcError(10028, "too_many_requests", http_status=429)
                if fault:
                    raise RpcError(10028, "too_many_requests")
                result = handler(dict(query))
        except RpcError as exc:
            return exc.http_status, self._response(None, received_us, error=exc).encode()
        return 200, self._response(None, received_us, result=result).encode()

    @staticmethod
    def _response(request_id: Any, received_us: int, result: Any = None,
                  error: RpcError | None = None) -> str:
        body: dict[str, Any] = {"jsonrpc": "2.0"}
        if request_id is not None:
            body["id"] = request_id
        if error is not None:
            err: dict[str, Any] = {"code": error.code, "message": error.message}
            if error.data is not None:
                err["data"] = error.data
            body["error"] = err
        else:
            body["result"] = result
        out_us = time.time_ns() // 1000
        body.update(usIn=received_us, usOut=out_us, usDiff=out_us - received_us, testnet=False)
        return _encode(body).decode()

    # --- REST methods (params: JSON types over WebSocket, strings over HTTP) --------------------

    def _currency_kind(self, params: dict[str, Any]) -> tuple[str, str | None]:
        currency = _p_str(params, "currency", required=True)
        assert currency is not None
        if currency not in self._currencies:
            raise _invalid("currency", "wrong format")
        kind = _p_str(params, "kind")
        if kind is not None and kind not in TRADE_KINDS:
            raise _invalid("kind", "wrong format")
        return currency, (None if kind in (None, "any") else kind)

    def get_instruments(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """``public/get_instruments {currency, kind?, expired?}``: the capture's recorded
        ``get_instruments`` rows for that currency when it has them, plus a synthesized row for
        every other instrument of the timeline (incl. fan-out copies): name-derived base/quote/
        settlement currency, expiry (08:00 UTC, ms), strike, option_type, kind,
        ``creation_timestamp`` = first seen on the timeline (ms); tick_size/contract_size/
        min_trade_amount are Deribit's usual values for the kind. ``expired=true`` → []."""
        currency, kind = self._currency_kind(params)
        if _p_bool(params, "expired", False):
            return []
        return [row for cur, row in self._all_instrument_rows()
                if currency in ("any", cur) and (kind is None or row.get("kind") == kind)
                and self._listed_now(row["instrument_name"])]

    def _all_instrument_rows(self) -> list[tuple[str, dict[str, Any]]]:
        if self._instrument_rows is None:
            rows = list(self._listed)
            listed = {row["instrument_name"]: row for _, row in self._listed}
            for name in sorted(self._first_seen):
                for copy, _ in self._copies.get(name, ()):
                    if copy not in listed and name in listed:
                        row = {k: v for k, v in listed[name].items() if k != "instrument_id"}
                        row.update(instrument_name=copy, strike=self._info[copy].strike)
                        rows.append((self._info[copy].currency, row))
                        listed[copy] = row
            for name in sorted(self._first_seen):
                if name not in listed:
                    rows.append((self._info[name].currency, self._synth_row(self._info[name])))
            self._instrument_rows = rows
        return self._instrument_rows

    def _synth_row(self, info: InstrumentInfo) -> dict[str, Any]:
        option = info.kind == "option"
        inverse_btc = info.base == "BTC" and not info.linear
        if option:
            tick, size, minimum = 0.0005, 1.0, 0.1 if inverse_btc else 1.0
        elif info.kind == "future" and not info.linear:
            tick, size, minimum = (0.5, 10.0, 10.0) if inverse_btc else (0.05, 1.0, 1.0)
        else:
            tick, size, minimum = 0.0001, 1.0, 1.0
        row: dict[str, Any] = {
            "instrument_name": info.name,
            "kind": info.kind,
            "base_currency": info.base,
            "quote_currency": info.quote,
            "settlement_currency": info.quote,
            "counter_currency": info.quote,
            "instrument_type": "linear" if info.linear else "reversed",
            "price_index": f"{info.base.lower()}_{'usdc' if info.linear else 'usd'}",
            "is_active": True,
            "creation_timestamp": self._first_seen.get(info.name),
            "tick_size": tick,
            "contract_size": size,
            "min_trade_amount": minimum,
        }
        if info.expiry_ms is not None:
            row["expiration_timestamp"] = info.expiry_ms
        if info.expiry_ms == PERPETUAL_EXPIRY_MS:
            row["settlement_period"] = "perpetual"
        if option:
            row.update(strike=info.strike, option_type=info.option_type)
        return row

    def get_book_summary_by_currency(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """``public/get_book_summary_by_currency {currency, kind?}``: one row per instrument from
        its latest ticker published so far: instrument_name, open_interest, mark_price, mark_iv,
        bid_price, ask_price, mid_price, underlying_price, underlying_index, interest_rate, last,
        volume, volume_usd, high, low, price_change, estimated_delivery_price, base/quote currency,
        creation_timestamp (= the ticker's timestamp, ms). Fields the ticker lacks are omitted."""
        currency, kind = self._currency_kind(params)
        rows = []
        for name, event in self._latest_ticker.items():
            if not self._listed_now(name):
                continue
            t = self._payload(event)
            info = self._info[name]
            if currency not in ("any", info.currency) or (kind is not None and info.kind != kind):
                continue
            bid, ask = t.get("best_bid_price"), t.get("best_ask_price")
            stats = t.get("stats") or {}
            row: dict[str, Any] = {"instrument_name": name}
            for src, dst in (("open_interest", "open_interest"), ("mark_price", "mark_price"),
                             ("mark_iv", "mark_iv"), ("best_bid_price", "bid_price"),
                             ("best_ask_price", "ask_price"),
                             ("underlying_price", "underlying_price"),
                             ("underlying_index", "underlying_index"),
                             ("interest_rate", "interest_rate"), ("last_price", "last"),
                             ("estimated_delivery_price", "estimated_delivery_price"),
                             ("current_funding", "current_funding"), ("funding_8h", "funding_8h")):
                if src in t:
                    row[dst] = t[src]
            row["mid_price"] = (bid + ask) / 2 if bid and ask else None
            for src, dst in (("volume", "volume"), ("volume_usd", "volume_usd"), ("high", "high"),
                             ("low", "low"), ("price_change", "price_change")):
                if src in stats:
                    row[dst] = stats[src]
            row.update(base_currency=info.base, quote_currency=info.quote,
                       creation_timestamp=t["timestamp"])
            rows.append(row)
        return rows

    def _instrument_trades(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        name = _p_str(params, "instrument_name", required=True)
        if name not in self._info:
            raise _invalid("instrument_name", "wrong format")
        return self._trades_by_instrument.get(name, [])

    def get_last_trades_by_instrument(self, params: dict[str, Any]) -> dict[str, Any]:
        """``public/get_last_trades_by_instrument {instrument_name, start_seq?, end_seq?,
        start_timestamp?, end_timestamp?, count?, sorting?}`` over the trades published so far
        (bounds inclusive; ``default`` sorting = newest first)."""
        trades = self._instrument_trades(params)
        lo_seq, hi_seq = _p_int(params, "start_seq"), _p_int(params, "end_seq")
        lo_ts, hi_ts = _p_int(params, "start_timestamp"), _p_int(params, "end_timestamp")
        return _page(trades, lambda t: _between(t["trade_seq"], lo_seq, hi_seq)
                     and _between(t["timestamp"], lo_ts, hi_ts),
                     _p_count(params), self._sorting(params))

    def get_last_trades_by_instrument_and_time(self, params: dict[str, Any]) -> dict[str, Any]:
        """``public/get_last_trades_by_instrument_and_time {instrument_name, start_timestamp,
        end_timestamp, count?, sorting?}``."""
        trades = self._instrument_trades(params)
        lo = _p_int(params, "start_timestamp", required=True)
        hi = _p_int(params, "end_timestamp", required=True)
        return _page(trades, lambda t: _between(t["timestamp"], lo, hi), _p_count(params),
                     self._sorting(params))

    def get_last_trades_by_currency(self, params: dict[str, Any]) -> dict[str, Any]:
        """``public/get_last_trades_by_currency {currency, kind?, start_id?, end_id?,
        start_timestamp?, end_timestamp?, count?, sorting?}`` (ids compared by numeric suffix)."""
        currency, kind = self._currency_kind(params)
        ids = [_p_str(params, "start_id"), _p_str(params, "end_id")]
        lo_id, hi_id = (None if i is None else _id_number(i) for i in ids)
        lo_ts, hi_ts = _p_int(params, "start_timestamp"), _p_int(params, "end_timestamp")
        return self._currency_page(params, currency, kind, lambda t: _between(
            _id_number(t["trade_id"]), lo_id, hi_id) and _between(t["timestamp"], lo_ts, hi_ts))

    def get_last_trades_by_currency_and_time(self, params: dict[str, Any]) -> dict[str, Any]:
        """``public/get_last_trades_by_currency_and_time {currency, kind?, start_timestamp,
        end_timestamp, count?, sorting?}`` (Deribit's 24-hour look-back limit is not emulated)."""
        currency, kind = self._currency_kind(params)
        lo = _p_int(params, "start_timestamp", required=True)
        hi = _p_int(params, "end_timestamp", required=True)
        return self._currency_page(params, currency, kind,
                                   lambda t: _between(t["timestamp"], lo, hi))

    def _currency_page(self, params: dict[str, Any], currency: str, kind: str | None,
                       keep: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        if currency == "any":
            trades = sorted(itertools.chain.from_iterable(self._trades_by_currency.values()),
                            key=lambda t: t["timestamp"])
        else:
            trades = self._trades_by_currency.get(currency, [])
        info = self._info

        def kind_ok(t: dict[str, Any]) -> bool:
            k = info[t["instrument_name"]].kind
            return kind is None or k == kind or (kind == "combo" and k.endswith("_combo"))

        return _page(trades, lambda t: kind_ok(t) and keep(t), _p_count(params),
                     self._sorting(params))

    @staticmethod
    def _sorting(params: dict[str, Any]) -> str:
        sorting = _p_str(params, "sorting", choices=("asc", "desc", "default"), default="default")
        assert sorting is not None
        return sorting


#: Picked up by :func:`collector_daemon.emulator.venue.load_venue`.
EMULATION = DeribitEmulation
