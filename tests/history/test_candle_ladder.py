"""The candle ladder (1m .. 1w) from imported Kraken trades equals a direct computation from the
trades, and Kraken's own 1-minute candles (real REST OHLC) agree with ours where both exist."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime

import psycopg
import pytest

from orchestration.lib.candles import INTERVALS, build_candles
from orchestration.lib.quality import exchange_candles_agree
from tickvault.history.kraken_csv import import_ohlcvt, import_trades

WIDTH_S = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14400, "12h": 43200,
           "1d": 86400, "1w": 7 * 86400}
MONDAY_S = 4 * 86400  # the epoch was a Thursday


def bucket(t_us: int, label: str) -> int:
    s = t_us // 1_000_000
    w = WIDTH_S[label]
    return s - (s - MONDAY_S) % w if label == "1w" else s - s % w


@pytest.fixture
def kraken_day(migrated_db_url, time_and_sales_csv) -> str:
    s = import_trades(migrated_db_url, time_and_sales_csv)
    assert s.inserted == 1000
    with psycopg.connect(migrated_db_url) as conn:
        for day in ("2025-11-10", "2025-11-11"):
            build_candles(conn, day)
    return migrated_db_url


def test_every_interval_equals_a_direct_computation(kraken_day):
    with psycopg.connect(kraken_day) as conn:
        trades = conn.execute(
            "SELECT (extract(epoch FROM exchange_ts) * 1e6)::bigint, price, amount FROM trades "
            "ORDER BY exchange_ts, trade_seq, trade_id").fetchall()
        got = {(i, int(b.timestamp())): (o, h, lo, c, v, n, w) for i, b, o, h, lo, c, v, n, w in conn.execute(
            "SELECT interval, bucket_start, open, high, low, close, volume, trade_count, vwap "
            "FROM candles WHERE venue = 'kraken' AND instrument_name = 'BTC/USDT'").fetchall()}
    want = {}
    for label in INTERVALS:
        groups: dict[int, list] = defaultdict(list)
        for t, p, a in trades:
            groups[bucket(t, label)].append((p, a))
        for b, rows in groups.items():
            prices = [p for p, _ in rows]
            vol = sum(a for _, a in rows)
            want[(label, b)] = (prices[0], max(prices), min(prices), prices[-1], vol, len(rows),
                                sum(p * a for p, a in rows) / vol)
    assert set(got) == set(want)
    assert {k[0] for k in got} == set(INTERVALS)
    for key, (o, h, lo, c, v, n, w) in want.items():
        go, gh, glo, gc, gv, gn, gw = got[key]
        assert (go, gh, glo, gc, gn) == (o, h, lo, c, n), key
        assert gv == pytest.approx(v, rel=1e-12) and gw == pytest.approx(w, rel=1e-12), key
    # both days fall in the week of Monday 2025-11-10: one weekly candle of all 1,000 trades
    week = got[("1w", int(datetime(2025, 11, 10, tzinfo=UTC).timestamp()))]
    assert week[5] == 1000


def test_kraken_candles_agree_with_ours_except_the_partial_first_minute(kraken_day, kraken_dir, tmp_path):
    """Real ``GET /0/public/OHLC?pair=XBTUSDT&interval=1`` (721 candles) against candles from
    the real 1,000 REST trades of the same pair: the 274 minutes both have agree, except the
    first one, where our trades start mid-minute (Kraken counts 2 trades, we hold 1)."""
    doc = json.loads((kraken_dir / "nautilus_test_data" / "http_ohlc.json").read_text())
    ohlc = tmp_path / "ohlc.csv"
    ohlc.write_text("".join(",".join(str(x) for x in r) + "\n" for r in doc["result"]["XBTUSDT"]))
    s = import_ohlcvt(kraken_day, ohlc, symbol="BTC/USDT", interval=1,
                      columns="time,open,high,low,close,vwap,volume,count".split(","))
    assert (s.inserted, s.rejected) == (721, 0)
    with psycopg.connect(kraken_day) as conn:
        day10 = exchange_candles_agree(conn, "2025-11-10")
        day11 = exchange_candles_agree(conn, "2025-11-11")
        conn.execute("UPDATE exchange_candles SET close = close + 1 WHERE interval_begin = '2025-11-11 00:05'")
        broken = exchange_candles_agree(conn, "2025-11-11")
    assert day10.metadata["compared"] + day11.metadata["compared"] == 274
    assert not day10.passed and day10.metadata["disagreements"] == 1
    bad = day10.metadata["samples"][0]
    assert bad["bucket_start"] == "2025-11-10T17:23:00+00:00"
    assert bad["differs"] == ["open", "low", "volume", "trade_count"]
    assert (bad["trade_count_exchange"], bad["trade_count_ours"]) == (2, 1)
    assert day11.passed and day11.metadata["compared_per_interval"] == {"1m": day11.metadata["compared"]}
    assert not broken.passed and broken.metadata["samples"][0]["differs"] == ["close"]
