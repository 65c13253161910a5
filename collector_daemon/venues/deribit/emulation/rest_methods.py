"""The REST data methods of the emulated Deribit (A.5), served over HTTP and WebSocket from what
the timeline has published so far; parameters arrive as JSON types (WebSocket) or strings
(HTTP)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from collector_daemon.emulator.venue import RpcError
from collector_daemon.venues.deribit.emulation.instruments import (
    TRADE_KINDS,
    InstrumentInfo,
    id_number,
    settlement_period,
)
from collector_daemon.venues.deribit.emulation.timeline import DeribitTimeline

#: ``count`` limits of the trade-history methods (A.5).
DEFAULT_COUNT, MAX_COUNT = 10, 1000
#: ``instrument_id`` of synthesized records: this + the position of the name in sorted order.
SYNTH_ID_BASE = 900_000


def invalid_param(param: str, reason: str) -> RpcError:
    """Deribit's -32602 "Invalid params" error naming ``param`` and why."""
    return RpcError(-32602, "Invalid params", {"param": param, "reason": reason})


def _p_str(params: dict[str, Any], name: str, required: bool = False,
           choices: Iterable[str] | None = None, default: str | None = None) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise invalid_param(name, "must be present")
        return default
    if not isinstance(value, str) or (choices is not None and value not in choices):
        raise invalid_param(name, "wrong format")
    return value


def _p_int(params: dict[str, Any], name: str, required: bool = False) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise invalid_param(name, "must be present")
        return None
    if isinstance(value, bool):
        raise invalid_param(name, "wrong format")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid_param(name, "wrong format") from None


def _p_bool(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise invalid_param(name, "wrong format")


def _p_count(params: dict[str, Any]) -> int:
    count = _p_int(params, "count")
    if count is None:
        return DEFAULT_COUNT
    if not 1 <= count <= MAX_COUNT:
        raise invalid_param("count", f"must be between 1 and {MAX_COUNT}")
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


class DeribitRest:
    """``public/<method>`` data methods over a :class:`DeribitTimeline`'s published state."""

    def __init__(self, timeline: DeribitTimeline) -> None:
        self._timeline = timeline
        self._instrument_rows: list[tuple[str, dict[str, Any]]] | None = None
        #: JSON-RPC method name -> handler (params dict -> result).
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "public/get_instruments": self.get_instruments,
            "public/get_book_summary_by_currency": self.get_book_summary_by_currency,
            "public/get_last_trades_by_instrument": self.get_last_trades_by_instrument,
            "public/get_last_trades_by_instrument_and_time":
                self.get_last_trades_by_instrument_and_time,
            "public/get_last_trades_by_currency": self.get_last_trades_by_currency,
            "public/get_last_trades_by_currency_and_time":
                self.get_last_trades_by_currency_and_time,
        }

    def _currency_kind(self, params: dict[str, Any]) -> tuple[str, str | None]:
        currency = _p_str(params, "currency", required=True)
        assert currency is not None
        if currency not in self._timeline.currencies:
            raise invalid_param("currency", "wrong format")
        kind = _p_str(params, "kind")
        if kind is not None and kind not in TRADE_KINDS:
            raise invalid_param("kind", "wrong format")
        return currency, (None if kind in (None, "any") else kind)

    def get_instruments(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """``public/get_instruments {currency, kind?, expired?}``: the capture's recorded
        ``get_instruments`` rows for that currency when it has them, plus a synthesized row for
        every other instrument of the timeline (incl. fan-out copies) with every field the
        exchange's records have (:meth:`_synth_row`): ``creation_timestamp`` = first seen on the
        timeline (ms). ``expired=true`` → []."""
        currency, kind = self._currency_kind(params)
        if _p_bool(params, "expired", False):
            return []
        return [row for cur, row in self._all_instrument_rows()
                if currency in ("any", cur) and (kind is None or row.get("kind") == kind)
                and self._timeline.listed_now(row["instrument_name"])]

    def _all_instrument_rows(self) -> list[tuple[str, dict[str, Any]]]:
        if self._instrument_rows is None:
            rows = list(self._timeline.listed)
            listed = {row["instrument_name"]: row for _, row in self._timeline.listed}
            for name in sorted(self._timeline.first_seen):
                for copy, _ in self._timeline.copies.get(name, ()):
                    if copy not in listed and name in listed:
                        row = {k: v for k, v in listed[name].items() if k != "instrument_id"}
                        row.update(instrument_name=copy, strike=self._timeline.info[copy].strike)
                        rows.append((self._timeline.info[copy].currency, row))
                        listed[copy] = row
            for i, name in enumerate(sorted(self._timeline.first_seen)):
                if name not in listed:
                    info = self._timeline.info[name]
                    rows.append((info.currency, self._synth_row(info, SYNTH_ID_BASE + i)))
            self._instrument_rows = rows
        return self._instrument_rows

    def _synth_row(self, info: InstrumentInfo, instrument_id: int) -> dict[str, Any]:
        """A ``get_instruments`` record as complete as the exchange's: every field of the real
        records (2021-07-22 responses in shared/data/real/deribit, and the current field set of
        nautilus' ``http_get_instruments.json``), values derived from the name
        (:func:`settlement_period`, expiry, strike) or Deribit's per-kind values seen there
        (tick size, contract size, minimum amount, commissions, leverage). cryptofeed reads
        ``settlement_period``, ``expiration_timestamp`` and ``tick_size`` of every record."""
        option = info.kind == "option"
        future = info.kind == "future"
        inverse = not info.linear
        inverse_btc = info.base == "BTC" and inverse
        if option:
            tick, size, minimum = 0.0005, 1.0, 0.1 if inverse_btc else 1.0
        elif future and inverse:
            tick, size, minimum = (0.5, 10.0, 10.0) if inverse_btc else (0.05, 1.0, 1.0)
        else:
            tick, size, minimum = 0.0001, 1.0, 1.0
        quote = "USD" if future and inverse else info.quote
        row: dict[str, Any] = {
            "instrument_name": info.name,
            "instrument_id": instrument_id,
            "kind": info.kind,
            "base_currency": info.base,
            "quote_currency": quote,
            "settlement_currency": info.base if inverse else info.quote,
            "counter_currency": "USD" if inverse else info.quote,
            "instrument_type": "linear" if info.linear else "reversed",
            "price_index": f"{info.base.lower()}_{'usdc' if info.linear else 'usd'}",
            "is_active": True,
            "creation_timestamp": self._timeline.first_seen.get(info.name),
            "tick_size": tick,
            "tick_size_steps": [],
            "contract_size": size,
            "min_trade_amount": minimum,
            "maker_commission": 0.0003 if option else 0.0,
            "taker_commission": 0.0003 if option else 0.0005,
            "block_trade_commission": 0.00025,
            "block_trade_min_trade_amount": 25 if option else 200000,
            "block_trade_tick_size": 0.0001 if option else 0.01,
            "max_leverage": 1 if option else 50,
            "max_liquidation_commission": 0.0075,
        }
        if info.expiry_ms is not None:
            row["expiration_timestamp"] = info.expiry_ms
        period = settlement_period(info)
        if period is not None:
            row["settlement_period"] = period
        if option:
            row.update(strike=info.strike, option_type=info.option_type)
        if future:
            row["future_type"] = row["instrument_type"]
        return row

    def get_book_summary_by_currency(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """``public/get_book_summary_by_currency {currency, kind?}``: one row per instrument from
        its latest ticker published so far: instrument_name, open_interest, mark_price, mark_iv,
        bid_price, ask_price, mid_price, underlying_price, underlying_index, interest_rate, last,
        volume, volume_usd, high, low, price_change, estimated_delivery_price, base/quote currency,
        creation_timestamp (= the ticker's timestamp, ms). Fields the ticker lacks are omitted."""
        currency, kind = self._currency_kind(params)
        rows = []
        for name, event in self._timeline.latest_ticker.items():
            if not self._timeline.listed_now(name):
                continue
            t = self._timeline.payload(event)
            info = self._timeline.info[name]
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
        if name not in self._timeline.info:
            raise invalid_param("instrument_name", "wrong format")
        return self._timeline.trades_by_instrument.get(name, [])

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
        lo_id, hi_id = (None if i is None else id_number(i) for i in ids)
        lo_ts, hi_ts = _p_int(params, "start_timestamp"), _p_int(params, "end_timestamp")
        return self._currency_page(params, currency, kind, lambda t: _between(
            id_number(t["trade_id"]), lo_id, hi_id) and _between(t["timestamp"], lo_ts, hi_ts))

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
            trades = sorted(
                itertools.chain.from_iterable(self._timeline.trades_by_currency.values()),
                key=lambda t: t["timestamp"])
        else:
            trades = self._timeline.trades_by_currency.get(currency, [])
        info = self._timeline.info

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
