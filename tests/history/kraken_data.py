"""Real Kraken data for the history tests (../shared/data/real/kraken) and what is derived
from it."""

from __future__ import annotations

import json
from pathlib import Path

#: Kraken's downloadable OHLCVT file, daily XBTUSD (3,727 rows; name changed by the collector
#: of ../shared, see PROVENANCE.md).
OHLCVT_NAME = "kraken_OHLCVT_download_XBTUSD_1440_daily_2013-10-06_to_2023-12-31.csv"
OHLCVT_ROWS = 3727


def real_rest_trades(kraken_dir: Path) -> list[list]:
    """The 1,000 real trades of ``GET /0/public/Trades?pair=XBTUSDT`` (Nautilus' test data):
    ``[price, volume, time, side, ordertype, misc, trade_id]`` in id order."""
    doc = json.loads((kraken_dir / "nautilus_test_data" / "http_trades.json").read_text())
    return doc["result"]["XBTUSDT"]


def time_and_sales_lines(trades: list[list]) -> list[str]:
    """Kraken's classic time-and-sales rows ``time,price,volume`` of the REST trades, the time
    written with the REST response's own digits (``repr`` of the float JSON gave us)."""
    return [f"{t[2]!r},{t[0]},{t[1]}" for t in trades]
