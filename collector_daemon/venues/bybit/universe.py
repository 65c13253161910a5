"""The Bybit instrument universe: which symbols the collector subscribes, per universe group.

Groups (``BybitSettings.universe_groups``): ``linear``, ``spot`` and one per option base coin
(``ETH``, ``BTC``: ``/v5/market/instruments-info?category=option`` defaults to BTC, so each
coin is asked for separately). ``instruments-info`` lists the live instruments (paged by
cursor); the selection is

* linear: the configured symbols that are listed, or the top N by 24 h turnover
  (``/v5/market/tickers``);
* spot: the configured symbols that are listed;
* options: the top N by open interest (``/v5/market/tickers?category=option&baseCoin=``), or all.

A delisted or expired instrument disappears from instruments-info, so the next refresh drops it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from collector_daemon.venues.bybit import messages as m
from collector_daemon.venues.bybit.rest import BybitRest

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Universe:
    """One refresh of one group.

    Attributes:
        category: ``linear``, ``spot`` or ``option``.
        instruments: live instruments as ``instruments-info`` lists them.
        open_interest: instrument name -> open interest (or, for linear top N, 24 h turnover is
            the ranking key; open interest is still what is reported).
        selected: instrument names to subscribe, best ranked first.
    """

    category: str
    instruments: list[dict]
    open_interest: dict[str, float]
    selected: list[str]

    def instrument_rows(self) -> list[tuple]:
        """``instruments`` rows (``rows.INSTRUMENTS`` order) of every listed instrument."""
        return [instrument_row(self.category, i, self.open_interest) for i in self.instruments]


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _ms_us(value: object) -> int | None:
    try:
        ms = int(value)
    except (TypeError, ValueError):
        return None
    return ms * 1000 if ms > 0 else None


def instrument_row(category: str, info: dict, open_interest: dict[str, float]) -> tuple:
    """One ``instruments`` row from an ``instruments-info`` entry. ``kind``: ``perpetual`` /
    ``future`` (linear ``contractType``), ``option``, ``spot``; strike from the option symbol
    (``ETH-26JUN26-16000-P``)."""
    symbol = info["symbol"]
    name = m.instrument_name(category, symbol)
    if category == "option":
        kind = "option"
    elif category == "spot":
        kind = "spot"
    else:
        kind = "perpetual" if "Perpetual" in str(info.get("contractType", "")) else "future"
    parts = symbol.split("-")
    strike = _float(parts[2]) if category == "option" and len(parts) >= 4 else None
    option_type = ({"Call": "call", "Put": "put"}.get(info.get("optionsType"))
                   if category == "option" else None)
    lot = info.get("lotSizeFilter") or {}
    return (m.VENUE, name, kind, info.get("baseCoin"), info.get("quoteCoin"), info.get("settleCoin"),
            option_type, strike, _ms_us(info.get("deliveryTime")),
            _float((info.get("priceFilter") or {}).get("tickSize")), 1.0,
            _float(lot.get("minOrderQty")), info.get("status", "Trading") in ("Trading", "PreLaunch", "Delivering"),
            _ms_us(info.get("launchTime")), open_interest.get(name))


def _ranked(values: dict[str, float], names: list[str], top_n: int | None) -> list[str]:
    ordered = sorted(names, key=lambda n: (-(values.get(n) or 0.0), n))
    return ordered if top_n is None else ordered[:top_n]


async def fetch_universe(rest: BybitRest, settings, group: str) -> Universe:
    """The live instruments of ``group`` (``linear``, ``spot`` or an option base coin) and the
    selection (module docstring).

    Raises:
        collector_daemon.venues.bybit.rest.BybitRestError: REST failed for good.
    """
    if group in ("linear", "spot"):
        listed = [i for i in await rest.instruments(group) if i.get("status", "Trading") == "Trading"]
        names = [m.instrument_name(group, i["symbol"]) for i in listed if isinstance(i.get("symbol"), str)]
        oi: dict[str, float] = {}
        top_n = settings.linear_top_n if group == "linear" else None
        if top_n is not None:
            turnover = {}
            for t in await rest.tickers("linear"):
                if isinstance(t.get("symbol"), str):
                    turnover[t["symbol"]] = _float(t.get("turnover24h")) or 0.0
                    if (v := _float(t.get("openInterest"))) is not None:
                        oi[t["symbol"]] = v
            selected = _ranked(turnover, names, top_n)
        else:
            wanted = settings.linear_symbol_list if group == "linear" else settings.spot_symbol_list
            known = set(names)
            selected = [m.instrument_name(group, s) for s in wanted if m.instrument_name(group, s) in known]
            missing = [s for s in wanted if m.instrument_name(group, s) not in known]
            if missing:
                log.warning("bybit %s: configured symbols not listed (not subscribed): %s",
                            group, ", ".join(missing))
        return Universe(group, listed, oi, selected)
    listed = [i for i in await rest.instruments("option", base_coin=group) if isinstance(i.get("symbol"), str)]
    oi = {t["symbol"]: v for t in await rest.tickers("option", base_coin=group)
          if isinstance(t.get("symbol"), str) and (v := _float(t.get("openInterest"))) is not None}
    names = [i["symbol"] for i in listed if i.get("status", "Trading") == "Trading"]
    return Universe("option", listed, oi, _ranked(oi, names, settings.option_top_n))
