"""Trade sources merged into the timeline: ``get_last_trades_*`` JSON dumps and cyri113-style
CSV files, ordered and given a ``trade_seq`` where the source lacks one."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from collector_daemon.emulator.replay import open_text
from collector_daemon.venues.deribit.emulation.instruments import id_number


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


def ordered_with_seq(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by (timestamp, trade_seq or trade id) and derive ``trade_seq`` (1, 2, ... per
    instrument) for instruments whose trades lack it."""
    trades = sorted(trades, key=lambda t: (t["timestamp"], t.get("trade_seq", -1),
                                           id_number(t["trade_id"])))
    lacking = {t["instrument_name"] for t in trades if "trade_seq" not in t}
    counters: dict[str, int] = {}
    for t in trades:
        name = t["instrument_name"]
        if name in lacking:
            counters[name] = counters.get(name, 0) + 1
            t["trade_seq"] = counters[name]
    return trades


def group_trades(trades: Iterable[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """Consecutive same-timestamp trades → one group per instrument, in first-seen order."""
    out = []
    for ts, same_ts in itertools.groupby(trades, key=lambda t: t["timestamp"]):
        groups: dict[str, list[dict[str, Any]]] = {}
        for t in same_ts:
            groups.setdefault(t["instrument_name"], []).append(t)
        out.extend((ts, name, group) for name, group in groups.items())
    return out
