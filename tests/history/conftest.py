"""Fixtures of the history tests (imports, candle ladder, query API): the real Kraken files from
../shared/data/real/kraken and a time-and-sales CSV derived from real REST trades."""

from __future__ import annotations

from pathlib import Path

import pytest

from kraken_data import real_rest_trades, time_and_sales_lines

@pytest.fixture(scope="session")
def kraken_dir(real_data_dir: Path) -> Path:
    return real_data_dir / "kraken"


@pytest.fixture
def time_and_sales_csv(kraken_dir: Path, tmp_path: Path) -> Path:
    """``XBTUSDT.csv``: the 1,000 real REST trades in the classic layout (no header)."""
    path = tmp_path / "XBTUSDT.csv"
    path.write_text("\n".join(time_and_sales_lines(real_rest_trades(kraken_dir))) + "\n")
    return path
