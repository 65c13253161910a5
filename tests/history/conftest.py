"""Fixtures of the history tests (imports, candle ladder, query API): the real Kraken files from
../shared/data/real/kraken and a time-and-sales CSV derived from real REST trades."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: Kraken's downloadable OHLCVT file, daily XBTUSD (3,727 rows; name changed by the collector
#: of ../shared, see PROVENANCE.md).
OHLCVT_NAME = "kraken_OHLCVT_download_XBTUSD_1440_daily_2013-10-06_to_2023-12-31.csv"
OHLCVT_ROWS = 3727


@pytest.fixture(scope="session")
def kraken_dir(real_data_dir: Path) -> Path:
    return real_data_dir / "kraken"


def real_rest_trades(kraken_dir: Path) -> list[list]:
    """The 1,000 real trades of ``GET /0/public/Trades?pair=XBTUSDT`` (Nautilus' test data):
    ``[price, volume, time, side, ordertype, misc, trade_id]`` in id order."""
    doc = json.loads((kraken_dir / "nautilus_test_data" / "http_trades.json").read_text())
    return doc["result"]["XBTUSDT"]


def time_and_sales_lines(trades: list[list]) -> list[str]:
    """Kraken's classic time-and-sales rows ``time,price,volume`` of the REST trades, the time
    written with the REST response's own digits (``repr`` of the float JSON gave us)."""
    return [f"{t[2]!r},{t[0]},{t[1]}" for t in trades]


@pytest.fixture
def time_and_sales_csv(kraken_dir: Path, tmp_path: Path) -> Path:
    """``XBTUSDT.csv``: the 1,000 real REST trades in the classic layout (no header)."""
    path = tmp_path / "XBTUSDT.csv"
    path.write_text("\n".join(time_and_sales_lines(real_rest_trades(kraken_dir))) + "\n")
    return path
