"""candles materialised in process; OHLCV recomputed independently from the raw CSV."""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from datetime import UTC, datetime

import polars as pl
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


BYBIT_CAPTURE = ("bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_"
                 "kline+instruments-info.jsonl.gz")
#: The capture's 347 trades (2026-08-09 21:26:59 .. 21:27:41 UTC) are written again at these
#: shifts (ms), with the trade id suffixed: once on Saturday 2026-08-08, four times on Sunday
#: 2026-08-09 (both 12h buckets, several 4h and 1h ones): the week (from Monday 08-03) has both.
BYBIT_SHIFTS_MS = tuple(h * 3_600_000 for h in (-44, -20, -11, -3, 0))
BYBIT_DAYS = ("2026-08-08", "2026-08-09")


def bybit_capture_trades(path) -> list[tuple[str, str, dict]]:
    """(category, the capture's raw frame, its parsed message) of every publicTrade frame."""
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "recv" and '"topic":"publicTrade.' in rec["raw"]:
                out.append((rec["url"].rsplit("/", 1)[-1], rec["raw"], json.loads(rec["raw"])))
    return out


def expected_bybit_candles(frames) -> pl.DataFrame:
    """The candles straight from the frames' JSON with polars (not through our decoder or SQL):
    one row per (instrument_name, interval, bucket_start ms) with open, high, low, close,
    volume, trade_count and vwap; trades ordered by (T, seq, i) within a bucket."""
    raw = pl.DataFrame([
        {"instrument_name": t["s"] + ("-SPOT" if category == "spot" else ""), "T": t["T"] + shift,
         "seq": t["seq"], "i": f"{t['i']}-{k}", "p": float(t["p"]), "v": float(t["v"])}
        for k, shift in enumerate(BYBIT_SHIFTS_MS) for category, _, msg in frames for t in msg["data"]])
    raw = raw.sort("T", "seq", "i")
    out = []
    for label, width in WIDTH_MS.items():
        origin = MONDAY_MS if label == "1w" else 0
        out.append(raw.with_columns(bucket_start=pl.col("T") - (pl.col("T") - origin) % width)
                   .group_by("instrument_name", "bucket_start", maintain_order=True)
                   .agg(open=pl.col("p").first(), high=pl.col("p").max(), low=pl.col("p").min(),
                        close=pl.col("p").last(), volume=pl.col("v").sum(),
                        trade_count=pl.len(), vwap=(pl.col("p") * pl.col("v")).sum() / pl.col("v").sum())
                   .with_columns(interval=pl.lit(label)))
    return pl.concat(out)


@pytest.mark.parametrize("dsn_fixture", ["migrated_db_url", "migrated_plain_db_url"])
def test_bybit_trades_get_candles(dsn_fixture, request, real_data_dir):
    """Bybit's trades (bybit_trades, decoded from the real 2026-08-09 v5 capture by the venue's
    own decoder) get candles 1m .. 1w equal to those polars computes from the frames' JSON, on
    TimescaleDB and on plain PostgreSQL; the candle check passes on them."""
    from collector_daemon.venues.bybit import messages as bm
    from collector_daemon.venues.bybit.protocol import BybitDecoder

    dsn = request.getfixturevalue(dsn_fixture)
    frames = bybit_capture_trades(real_data_dir / BYBIT_CAPTURE)
    decoders = {c: BybitDecoder(c) for c in {c for c, _, _ in frames}}
    assert set(decoders) == {"linear", "spot"}
    cols = bm.TRADES.columns
    rows = []
    for k, shift in enumerate(BYBIT_SHIFTS_MS):
        for category, raw, _ in frames:
            for r in decoders[category].decode(raw, 0).rows:
                d = dict(zip(cols, r))
                d["exchange_ts"] += shift * 1000
                d["receive_ts"] = d["exchange_ts"] + 20_000
                d["trade_id"] = f"{d['trade_id']}-{k}"
                rows.append(tuple(d[c] for c in cols))
    assert write(dsn, bm.TRADES, rows) == len(rows) > 400

    res = resources(dsn)
    for day in BYBIT_DAYS:
        result = materialize([candles], day, res, with_checks=True)
        assert result.success and check_results(result)["candles_match_trades"].passed
    meta = mat_metadata(result, "candles")
    assert meta["trades"] == 4 * 347 == 4 * len(rows) // len(BYBIT_SHIFTS_MS)   # 2026-08-09

    with psycopg.connect(dsn) as conn:
        got = pl.DataFrame(conn.execute(
            "SELECT venue, instrument_name, interval, (extract(epoch FROM bucket_start) * 1000)::bigint, "
            "open, high, low, close, volume, trade_count, vwap FROM candles").fetchall(),
            schema=["venue", "instrument_name", "interval", "bucket_start", "open", "high", "low",
                    "close", "volume", "trade_count", "vwap"], orient="row")
    assert set(got["venue"]) == {"bybit"}
    want = expected_bybit_candles(frames)
    key = ["instrument_name", "interval", "bucket_start"]
    joined = want.join(got, on=key, how="full", suffix="_got", coalesce=True)
    assert len(joined) == len(want) == len(got)
    assert set(want["instrument_name"]) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT",
                                            "BTCUSDT-SPOT", "ETHUSDT-SPOT"}
    assert sorted(want.group_by("interval").len().rows()) == sorted(got.group_by("interval").len().rows())
    for r in joined.iter_rows(named=True):
        k = (r["instrument_name"], r["interval"], r["bucket_start"])
        assert (r["open_got"], r["high_got"], r["low_got"], r["close_got"], r["trade_count_got"]) == (
            r["open"], r["high"], r["low"], r["close"], r["trade_count"]), k
        assert r["volume_got"] == pytest.approx(r["volume"], rel=1e-12), k
        assert r["vwap_got"] == pytest.approx(r["vwap"], rel=1e-12), k
    # the perpetual's days, spelled out: one copy of the capture on 2026-08-08, four on the 9th;
    # the week's candle holds both
    perp = got.filter(pl.col("instrument_name") == "BTCUSDT").sort("bucket_start")
    n = perp.filter(pl.col("interval") == "1d")["trade_count"].to_list()
    assert n == [n[0], 4 * n[0]] and n[0] > 50
    assert perp.filter(pl.col("interval") == "1w")["trade_count"].to_list() == [5 * n[0]]
    assert perp.filter(pl.col("interval") == "12h")["trade_count"].to_list() == [n[0], 2 * n[0], 2 * n[0]]
