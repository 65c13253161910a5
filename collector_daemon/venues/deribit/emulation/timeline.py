"""The Deribit timeline: read a capture (and an optional trade source) into events, re-key them
for later loops and fan-out copies (lazily: a copy's bytes are derived from the original's), and
keep the state published so far that the REST methods serve (latest tickers, trades)."""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from collector_daemon.emulator.replay import read_capture
from collector_daemon.emulator.venue import Event
from collector_daemon.venues.deribit.emulation.instruments import (
    CURRENCIES,
    InstrumentInfo,
    format_strike,
    id_number,
    parse_instrument,
    shift_id,
)
from collector_daemon.venues.deribit.emulation.trade_sources import (
    group_trades,
    load_trade_source,
    ordered_with_seq,
)

_encode = msgspec.json.encode


class _Variant(Event):
    """A ticker/book event of a later loop or a fan-out copy. Its ``data`` stays None until the
    venue needs it (:meth:`DeribitTimeline.payload`); its bytes are derived from ``source``'s."""

    __slots__ = ("source", "dt", "change_shift")
    source: Event
    dt: int
    change_shift: int


class DeribitTimeline:
    """Events of one replay and the state they publish (see the package docstring, "Replay
    semantics"). ``fanout`` copies of every option instrument (>= 1); ``churn`` lists and delists
    the copies while the replay runs.

    Attributes read by the REST methods and the wire format:
        info: instrument name -> :class:`InstrumentInfo` (timeline, listed and copies).
        first_seen: instrument name -> replay time (ms) of its first event.
        listed: the capture's recorded ``get_instruments`` rows, as (currency, row).
        copies: option -> [(fan-out copy name, its trade routes)].
        currencies: currencies a ``trades.{kind}.{currency}`` channel may name.
        latest_ticker: instrument name -> its latest published ticker event.
        trades_by_instrument / trades_by_currency: trades published so far, in order.
    """

    def __init__(self, fanout: int, churn: bool) -> None:
        self.fanout = fanout
        self.churn = churn
        self._clock = 0                                # replay time of the newest event (ms)
        self._windows: dict[str, tuple[int, int]] = {}  # churn: copy -> listed [from, to] (ms)
        self.info: dict[str, InstrumentInfo] = {}
        self.first_seen: dict[str, int] = {}
        self.listed: list[tuple[str, dict[str, Any]]] = []  # (currency, get_instruments row)
        # option -> [(copy name, its trade routes)]
        self.copies: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        self.currencies = set(CURRENCIES)
        self._ts_shift = 0
        self._id_span = 0
        self._seq_span: dict[str, int] = {}
        self._change_span = 0
        # published state (served by REST)
        self.latest_ticker: dict[str, Event] = {}
        self.trades_by_instrument: dict[str, list[dict[str, Any]]] = {}
        self.trades_by_currency: dict[str, list[dict[str, Any]]] = {}

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
                for ts, name, group in group_trades(data):
                    clock = ts if clock is None else max(clock, ts)
                    captured.append(self._trades_event(clock, name, group))
        source = ordered_with_seq(load_trade_source(trades)) if trades else []
        if align_trades and source and captured:
            offset = captured[0].ts - min(t["timestamp"] for t in source)
            source = [dict(t, timestamp=t["timestamp"] + offset) for t in source]
        sourced = [self._trades_event(ts, name, group) for ts, name, group in group_trades(source)]
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
                self.listed.append((currency, row))

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
        info = self.info.get(name)
        if info is None:
            info = self.info[name] = parse_instrument(name)
        return info

    def _prepare(self, events: list[Event]) -> None:
        """Spans for loop re-keying, fan-out copies, first-seen times and the known instruments."""
        timestamps = [e.ts for e in events[:1]] + [e.ts for e in events[-1:]]
        ids: list[int] = []
        seqs: dict[str, list[int]] = {}
        change_ids: list[int] = []
        for e in events:
            self.first_seen.setdefault(e.instrument, e.ts)
            self._instrument(e.instrument)
            if e.kind == "trades":
                for t in e.data:
                    timestamps.append(t["timestamp"])
                    ids.append(id_number(t["trade_id"]))
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
        for _, row in self.listed:
            self._instrument(row["instrument_name"])
        self.currencies.update(info.currency for info in self.info.values())
        if self.fanout > 1:
            self._make_copies()
            if self.churn and timestamps:
                self._churn_windows(min(timestamps), max(timestamps))

    def _churn_windows(self, first: int, last: int) -> None:
        """Copy j of F is listed during [first + (j-1)/F, first + (j+1)/F] of the timeline span:
        copies appear and expire while the replay runs (the originals stay listed). Meant for
        one loop (later loops are shifted past every window)."""
        span = max(1, last - first)
        for copies in self.copies.values():
            for j, (name, _) in enumerate(copies, 1):
                self._windows[name] = (first + (j - 1) * span // self.fanout,
                                       first + (j + 1) * span // self.fanout)

    def listing_windows(self) -> dict[str, tuple[int, int]]:
        """Churn: instrument -> (listed from, delisted after), replay ms of the first loop."""
        return dict(self._windows)

    def listed_now(self, name: str) -> bool:
        """Whether ``name`` is listed at the replay time published so far (churn windows)."""
        window = self._windows.get(name)
        return window is None or window[0] <= self._clock <= window[1]

    def _make_copies(self) -> None:
        taken = set(self.info)
        for name in sorted(self.first_seen):
            info = self.info[name]
            if info.kind != "option" or info.strike is None:
                continue
            parts = name.split("-")
            copies = []
            strike = info.strike
            while len(copies) < self.fanout - 1:
                strike += 1
                copy = "-".join((parts[0], parts[1], format_strike(strike), parts[3]))
                if copy in taken:
                    continue
                taken.add(copy)
                self.info[copy] = replace(info, name=copy, strike=strike)
                self.first_seen[copy] = self.first_seen[name]
                copies.append(copy)
            self.copies[name] = [(c, self._trade_routes(c)) for c in copies]

    def instantiate(self, event: Event, loop_index: int) -> Sequence[Event]:
        """``event`` as played in loop ``loop_index`` followed by its fan-out copies (listed ones
        only, under churn); see
        :meth:`collector_daemon.emulator.venue.VenueEmulation.instantiate`."""
        copies = self.copies.get(event.instrument)
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
                         trade_id=shift_id(t["trade_id"], id_shift))
                if seq_shift and isinstance(t.get("trade_seq"), int):
                    t["trade_seq"] += seq_shift
                trades.append(t)
            return Event(event.ts + dt, "trades", name, routes, trades,
                         tuple((name, t["trade_id"]) for t in trades))
        variant = _Variant(event.ts + dt, event.kind, name, routes, None)
        variant.source, variant.dt = event, dt
        variant.change_shift = k * self._change_span if event.kind == "book" else 0
        return variant

    def loop_fields(self, event: Event) -> tuple[tuple[bytes, int], ...] | None:
        """Per-loop changes of a ticker or book notification (``timestamp`` + k x span, book
        ``change_id``/``prev_change_id`` + k x change-id span: what :meth:`_variant` does);
        None for trades (their ids and ``trade_seq`` are re-keyed too)."""
        if event.kind == "trades":
            return None
        fields: tuple[tuple[bytes, int], ...] = ((b'"timestamp":', self._ts_shift),)
        if event.kind == "book" and self._change_span:
            fields += ((b'"change_id":', self._change_span),
                       (b'"prev_change_id":', self._change_span))
        return fields

    @staticmethod
    def payload(event: Event) -> Any:
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

    def encoded(self, event: Event) -> bytes:
        """Serialised payload, cached on the event. A :class:`_Variant` is derived from its
        source's bytes by substituting the changed top-level scalars (each token must occur exactly
        once, else it is encoded normally): several times cheaper than encoding a ticker again."""
        encoded = event.encoded
        if encoded is not None:
            return encoded
        if isinstance(event, _Variant):
            source = event.source
            original = source.data
            encoded = self.encoded(source)
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
                    encoded = _encode(self.payload(event))
                    break
                encoded = encoded.replace(before, after)
        else:
            encoded = _encode(event.data)
        event.encoded = encoded
        return encoded

    def publish(self, event: Event) -> None:
        """Advance the replay clock and record what the REST methods serve: the latest ticker of
        the instrument, or its trades (by instrument and by currency)."""
        self._clock = max(self._clock, event.ts)
        if event.kind == "ticker":
            self.latest_ticker[event.instrument] = event
        elif event.kind == "trades":
            self.trades_by_instrument.setdefault(event.instrument, []).extend(event.data)
            currency = self.info[event.instrument].currency
            self.trades_by_currency.setdefault(currency, []).extend(event.data)
