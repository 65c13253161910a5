"""Fixtures of the exchange-emulator tests: the real captures they replay.

``real_data_dir`` comes from tests/conftest.py (skip locally, fail in CI when the captures are
missing).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def deribit_dir(real_data_dir: Path) -> Path:
    return real_data_dir / "deribit"


@pytest.fixture(scope="session")
def capture_0405(deribit_dir: Path) -> Path:
    """7 ETH + 3 BTC options, 273 ticker + 187 book notifications, no trades."""
    return deribit_dir / "cryptofeed_2021-04-05_options_ticker_book_ws.jsonl.gz"


@pytest.fixture(scope="session")
def capture_0722(deribit_dir: Path) -> Path:
    """Tickers and books plus the recorded get_instruments responses (BTC 398, ETH 426 rows)."""
    return deribit_dir / "cryptofeed_2021-07-22_options_ticker_book_ws+get_instruments.jsonl.gz"


@pytest.fixture(scope="session")
def cyri113_csv(deribit_dir: Path) -> Path:
    """9,424 BTC trades (277 options, 9,147 BTC-PERPETUAL) without trade_seq."""
    return deribit_dir / ("cyri113_2026-08-17_btc_perpetual+0dte_options_trades"
                          "_from_sqlite_wal.csv.gz")
