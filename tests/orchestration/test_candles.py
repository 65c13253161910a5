"""candles materialised in process; OHLCV recomputed independently from the raw CSV."""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from datetime import UTC, datetime

import psycopg
import pytest

from collector_daemon.rows import TRADES
from orch_dagster import candles, check_results, mat_metadata, materialize, resources
from orch_data import CYRI113_CSV, cyri113_trades, trade_rows, write

WIDTH_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
            "4h": 14_400_000, "12h": 43_200_000, "1d": 86_400_000, "1w": 7 * 86_400_000}
#: Weeks start on Monday 00:00 UTC; the epoch was a Thursday, the first Monday 4 days later.
MONDAY_MS = 4 * 86_400_000


def expected_candles(path) -> dict[tuple, tuple]:
    """(instrument, interval, bucket_start) -> (open, high, low, close, volume, count, vwap),
    straight from the CSV: trades ordered by (timestamp, numeric id) within a bucket."""
    with gzip.open(path, "rt") as fh:
        raw = sorted(csv.DictReader(fh), key=lambda r: (int(r["timestamp"]), int(r["id"])))
    out = {}
    for label, width in WIDTH_MS.items():
        buckets: dict[tuple, list] = defaultdict(list)
        for r in raw:
            ts = int(r["timestamp"])
            start = ts - (ts - MONDAY_MS) % width if label == "1w" else ts - ts % width
            buckets[(r["instrument_name"], label, start)].append(
                (float(r["price"]), float(r["amount"])))
        for key, trades in buckets.items():
            prices = [p for p, _ in trades]
            vol = sum(a for _, a in trades)
            out[key] = (prices[0], max(prices), min(prices), prices[-1], vol, len(trades),
                        sum(p * a for p, a in trades) / vol)
    return out


@pytest.mark.parametrize("dsn_fixture", ["migrated_db_url", "migrated_plain_db_url"])
def test_candles_match_raw_trades(dsn_fixture, request, deribit_dir):
    dsn = request.getfixturevalue(dsn_fixture)
    write(dsn, TRADES, trade_rows(cyri113_trades(deribit_dir / CYRI113_CSV)))
    res = resources(dsn)
    for day in ("2026-08-16", "2026-08-17"):
        result = materialize([candles], day, res, with_checks=True)
        assert result.success
        checks = check_results(result)
        assert checks["candles_match_trades"].passed
    meta = mat_metadata(result, "candles")
    assert meta["bucket_function"] == ("time_bucket" if dsn_fixture == "migrated_db_url" else "date_bin")
    assert meta["trades"] == sum(1 for t in cyri113_trades(deribit_dir / CYRI113_CSV)
                                 if t.timestamp >= datetime(2026, 8, 17, tzinfo=UTC).timestamp() * 1000)

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT instrument_name, interval, (extract(epoch FROM bucket_start) * 1000)::bigint, "
            "open, high, low, close, volume, trade_count, vwap FROM candles").fetchall()
    got = {(n, i, b): (o, h, lo, c, v, k, w) for n, i, b, o, h, lo, c, v, k, w in rows}
    want = expected_candles(deribit_dir / CYRI113_CSV)
    assert set(got) == set(want)
    for key, (o, h, lo, c, v, k, w) in want.items():
        go, gh, glo, gc, gv, gk, gw = got[key]
        assert (go, gh, glo, gc, gk) == (o, h, lo, c, k), key
        assert gv == pytest.approx(v, rel=1e-12) and gw == pytest.approx(w, rel=1e-12), key
    # the busiest minute of the perpetual, spelled out
    perp_1m = {k: v for k, v in want.items() if k[0] == "BTC-PERPETUAL" and k[1] == "1m"}
    busiest = max(perp_1m, key=lambda k: perp_1m[k][5])
    assert got[busiest][5] == perp_1m[busiest][5] > 50


def test_candles_rerun_updates_and_drops_stale(migrated_db_url, deribit_dir):
    trades = cyri113_trades(deribit_dir / CYRI113_CSV)
    day17 = [t for t in trades if t.timestamp >= datetime(2026, 8, 17, tzinfo=UTC).timestamp() * 1000]
    write(migrated_db_url, TRADES, trade_rows(day17[:-1]))
    res = resources(migrated_db_url)
    first = mat_metadata(materialize([candles], "2026-08-17", res), "candles")
    write(migrated_db_url, TRADES, trade_rows(day17[-1:], source="rest"))
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("DELETE FROM trades WHERE instrument_name = 'BTC-17AUG26-66000-P'")
    second = mat_metadata(materialize([candles], "2026-08-17", res), "candles")
    assert second["trades"] == first["trades"]  # +1 last trade, -1 deleted single trade
    assert second["deleted_stale"] == 9  # the deleted instrument's 1m..1d candles and its week
    with psycopg.connect(migrated_db_url) as conn:
        n, vol = conn.execute("SELECT sum(trade_count), sum(volume) FROM candles WHERE interval = '1d'"
                              ).fetchone()
        tn, tvol = conn.execute("SELECT count(*), sum(amount) FROM trades WHERE exchange_ts >= "
                                "'2026-08-17'").fetchone()
    assert n == tn and vol == pytest.approx(tvol, rel=1e-12)


def test_candles_are_not_rebuilt_from_a_day_retention_dropped(migrated_db_url, deribit_dir):
    """The day's trades were exported (export_manifest) with more rows than the database holds
    after retention and a small backfill: rebuilding would shrink the day's candles, so it is
    refused and the candles stay as they were."""
    from orchestration.lib.candles import CandleError, build_candles

    trades = cyri113_trades(deribit_dir / CYRI113_CSV)
    day17 = [t for t in trades if t.timestamp >= datetime(2026, 8, 17, tzinfo=UTC).timestamp() * 1000]
    write(migrated_db_url, TRADES, trade_rows(day17))
    with psycopg.connect(migrated_db_url) as conn:
        build_candles(conn, "2026-08-17")
        before = conn.execute("SELECT interval, count(*), sum(trade_count) FROM candles GROUP BY 1 ORDER BY 1").fetchall()
        conn.execute(
            "INSERT INTO export_manifest (venue, table_name, day, export_id, schema_version, source_rows, "
            "rows, bytes, object_keys, object_bytes, object_sha256, object_etags, manifest_key, storage_url, "
            "exported_at, verified_at) VALUES ('deribit', 'trades', '2026-08-17', 'x', 1, %s, %s, 1, "
            "'{k}', '{1}', '{s}', '{e}', 'm', 'file:///x', now(), now())", (len(day17), len(day17)))
        conn.execute("DELETE FROM trades WHERE exchange_ts >= '2026-08-17' AND trade_id <> %s",
                     (str(day17[0].trade_id),))
        conn.commit()
        with pytest.raises(CandleError, match=f"exported with {len(day17)} rows but the database holds 1 now"):
            build_candles(conn, "2026-08-17")
        after = conn.execute("SELECT interval, count(*), sum(trade_count) FROM candles GROUP BY 1 ORDER BY 1").fetchall()
    assert after == before and sum(r[2] for r in before if r[0] == "1d") == len(day17)
