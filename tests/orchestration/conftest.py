"""Fixtures of the orchestration tests: the emulator standing in for Deribit REST, and the
real-capture datasets (with derived gaps) loaded into the per-test database.

Helpers live in ``orch_data.py`` (data, emulator) and ``orch_dagster.py`` (resources,
materialisation). Database fixtures (``migrated_db_url`` ...) come from ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

# These tests run Deribit's captures through Dagster: the deployment under test records Deribit
# only (TICKVAULT_VENUES, read when orchestration is imported); other built-in venues (bybit)
# would otherwise join every asset and need resources of their own.
os.environ.setdefault("TICKVAULT_VENUES", "deribit")

from collector_daemon.rows import QUOTES, TRADES  # noqa: E402
from orch_data import (
    CAPTURE_0405, CAPTURE_0722, CYRI113_CSV, D0817, Q_INSTR, Q_TS, SILENT, Emulator,
    capture_quote_rows, connection_event, cyri113_trades, dt_us, start_emulator, trade_rows, write,
    write_events,
)


@pytest.fixture(scope="session")
def deribit_dir(real_data_dir: Path) -> Path:
    return real_data_dir / "deribit"


@pytest.fixture(scope="module")
def emu_trades(deribit_dir: Path) -> Iterator[Emulator]:
    """Emulator replaying the 2021-04-05 ticker capture plus the cyri113 BTC trades (9,424;
    trade_seq derived per instrument): REST serves those trades and the capture's book summary."""
    emu = start_emulator(deribit_dir / CAPTURE_0405, deribit_dir / CYRI113_CSV)
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def emu_universe(deribit_dir: Path) -> Iterator[Emulator]:
    """Emulator replaying the 2021-07-22 capture, which holds recorded get_instruments answers."""
    emu = start_emulator(deribit_dir / CAPTURE_0722)
    yield emu
    emu.stop()


@pytest.fixture
def quotes_day(migrated_db_url, deribit_dir):
    """2021-04-05: the capture's quotes minus 85 s of one instrument, a disconnect after the last
    frame that is never resubscribed, and a subscription set with one instrument never quoted."""
    rows = capture_quote_rows(deribit_dir / CAPTURE_0405)
    mine = sorted(r[Q_TS] for r in rows if r[Q_INSTR] == SILENT)
    t0 = mine[0]
    cut = (t0 + 20_000_000, t0 + 105_000_000)
    kept = [r for r in rows if not (r[Q_INSTR] == SILENT and cut[0] < r[Q_TS] < cut[1])]
    assert len(rows) - len(kept) > 20
    write(migrated_db_url, QUOTES, kept)
    first = min(r[Q_TS] for r in rows)
    last = max(r[Q_TS] for r in rows)
    disconnect = dt_us(last + 500_000)
    write_events(migrated_db_url, [
        connection_event("c1", "connect", dt_us(first - 1_000_000)),
        connection_event("c1", "subscribed", dt_us(first - 500_000),
                         channels=sorted({f"ticker.{r[Q_INSTR]}.100ms" for r in rows})),
        connection_event("c1", "disconnect", disconnect, reason="test: network down"),
    ])
    names = sorted({r[Q_INSTR] for r in rows}) + ["ETH-9APR21-2000-C"]
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO universe_versions (venue, currency, created_at, top_n, instruments, "
                     "subscribed) VALUES ('deribit', 'ETH', %s, NULL, 11, %s)",
                     (datetime(2021, 4, 4, 12, tzinfo=UTC), names))
    return {
        "before": dt_us(max(t for t in mine if t <= cut[0])),
        "after": dt_us(min(t for t in mine if t >= cut[1])),
        "disconnect": disconnect,
    }


@pytest.fixture
def trades_days(migrated_db_url, deribit_dir):
    """2026-08-16/17: the cyri113 trades (trade_seq derived) minus three holes, one of them across
    midnight, and a reconnect window on the trades channels whose trades are missing."""
    full = cyri113_trades(deribit_dir / CYRI113_CSV)
    perp = [t for t in full if t.instrument_name == "BTC-PERPETUAL"]
    put = sorted((t for t in full if t.instrument_name == "BTC-17AUG26-62500-P"),
                 key=lambda t: t.trade_seq)
    last_16 = max(t.trade_seq for t in put if t.timestamp < D0817.timestamp() * 1000)
    w1 = datetime(2026, 8, 17, 18, 0, 0, tzinfo=UTC)
    w2 = w1 + timedelta(seconds=30)
    in_window = {t.trade_id for t in full if w1.timestamp() * 1000 < t.timestamp < w2.timestamp() * 1000}
    removed = ({t.trade_id for t in perp if 100 <= t.trade_seq <= 104}
               | {t.trade_id for t in put if t.trade_seq in (last_16, last_16 + 1)}
               | in_window)
    live = [t for t in full if t.trade_id not in removed]
    write(migrated_db_url, TRADES, trade_rows(live))
    write_events(migrated_db_url, [
        connection_event("c1", "connect", datetime(2026, 8, 16, 20, tzinfo=UTC)),
        connection_event("c1", "disconnect", w1 + timedelta(seconds=5), reason="test"),
        connection_event("c2", "connect", w2 - timedelta(seconds=1)),
        connection_event("c2", "subscribed", w2, channels=["trades.option.BTC.100ms",
                                                         "trades.future.BTC.100ms"],
                         window=(w1, w2)),
    ])
    win_perp = sorted((t for t in perp if t.trade_id in in_window), key=lambda t: t.trade_seq)
    assert len(win_perp) > 5
    by_seq = {t.trade_seq: t for t in perp}
    ms = lambda t: dt_us(t.timestamp * 1000)  # noqa: E731
    return {
        "full": full, "live": live, "removed": removed, "window": (w1, w2),
        "expected_17": sorted([
            ("trades", "*", w1, w2, None, None, "disconnect"),
            ("trades", "BTC-17AUG26-62500-P", ms(next(t for t in put if t.trade_seq == last_16 - 1)),
             ms(next(t for t in put if t.trade_seq == last_16 + 2)), last_16, last_16 + 1, "trade_seq hole"),
            ("trades", "BTC-PERPETUAL", ms(by_seq[99]), ms(by_seq[105]), 100, 104, "trade_seq hole"),
            ("trades", "BTC-PERPETUAL", ms(by_seq[win_perp[0].trade_seq - 1]),
             ms(by_seq[win_perp[-1].trade_seq + 1]), win_perp[0].trade_seq, win_perp[-1].trade_seq,
             "trade_seq hole"),
        ], key=lambda x: (x[0], x[1], x[2])),
    }
