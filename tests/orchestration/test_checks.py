"""Asset checks evaluated per partition in process, with values asserted."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg
import msgspec
import psycopg
import pytest

from collector_daemon.rows import QUOTES, TRADES
from collector_daemon.venues.deribit import messages as m
from orch_dagster import (
    check_results, checks_of, materialize, resources, trade_gaps, trades_backfill,
)
from orch_data import (
    CAPTURE_0405, D0405, D0406, D0817, Q_INSTR, Q_TS, capture_quote_rows, dt_us, trade_rows, write,
)

from collector_daemon.core import days
from orchestration.lib import quality

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
BTC = {"currency": "BTC", "kinds": ["option", "future"]}
D0407 = datetime(2021, 4, 7, tzinfo=UTC)
QCOL = {c: i for i, c in enumerate(QUOTES.columns)}


def _meta(evaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_quote_checks_on_captured_day(migrated_db_url, quotes_day, deribit_dir):
    result = materialize([trade_gaps], "2021-04-05", resources(migrated_db_url), with_checks=True)
    checks = check_results(result)
    assert set(checks) == {"quote_freshness", "quote_coverage", "crossed_quotes", "quotes_in_range",
                           "quotes_no_duplicates", "open_interest_vs_rest"}
    rows = [r for r in capture_quote_rows(deribit_dir / CAPTURE_0405)]
    with psycopg.connect(migrated_db_url) as conn:
        stored = conn.execute("SELECT count(*), max(exchange_ts) FROM quotes").fetchone()

    fresh = checks["quote_freshness"]
    assert not fresh.passed and fresh.severity == WARN
    assert _meta(fresh)["age_s"] == round((D0406 - stored[1]).total_seconds(), 3)
    assert _meta(fresh)["current_day"] is False

    cov = checks["quote_coverage"]
    assert not cov.passed and cov.severity == WARN
    meta = _meta(cov)
    assert meta["basis"] == "universe_versions" and meta["instruments"] == 11
    minutes = defaultdict(set)
    for r in rows:
        minutes[r[Q_INSTR]].add(r[Q_TS] // 60_000_000)
    # the 85 s hole of quotes_day removed whole minutes of one instrument: recount from the DB rows
    with psycopg.connect(migrated_db_url) as conn:
        per = dict(conn.execute("SELECT instrument_name, count(DISTINCT date_trunc('minute', exchange_ts)) "
                                "FROM quotes GROUP BY 1").fetchall())
    expected = {n: round(per.get(n, 0) / 1440, 6) for n in list(minutes) + ["ETH-9APR21-2000-C"]}
    assert meta["coverage"] == expected
    assert meta["min_coverage"] == 0.0 and meta["below_threshold"] == 11

    assert checks["crossed_quotes"].passed and checks["crossed_quotes"].severity == WARN
    assert _meta(checks["crossed_quotes"])["crossed"] == 0
    assert checks["quotes_in_range"].passed and checks["quotes_in_range"].severity == ERROR
    assert _meta(checks["quotes_in_range"])["rows"] == stored[0]
    dup = checks["quotes_no_duplicates"]
    assert dup.passed and dup.severity == ERROR and _meta(dup)["quotes"] == stored[0]
    oi = checks["open_interest_vs_rest"]
    assert oi.passed and _meta(oi)["evaluated"] is False


@pytest.fixture
def synthetic_day(migrated_db_url, deribit_dir):
    """2021-04-07 built from the capture by time-shifting: ETH-9APR21-1950-C's 2 minutes repeated
    all day (full coverage), ETH-16APR21-1600-C's only in the first half; 3 crossed quotes and
    one negative mark IV injected."""
    rows = capture_quote_rows(deribit_dir / CAPTURE_0405)
    out = []
    for name, copies in (("ETH-9APR21-1950-C", 720), ("ETH-16APR21-1600-C", 360)):
        mine = sorted((r for r in rows if r[Q_INSTR] == name), key=lambda r: r[Q_TS])
        base = int(D0407.timestamp() * 1_000_000) - mine[0][Q_TS]
        for k in range(copies):
            for r in mine:
                shifted = list(r)
                shifted[Q_TS] += base + k * 120_000_000
                shifted[QCOL["receive_ts"]] += base + k * 120_000_000
                out.append(shifted)
    crossable = [r for r in out if r[QCOL["best_ask_price"]] and r[QCOL["best_bid_amount"]]
                 and r[QCOL["best_ask_amount"]]][:3]
    for r in crossable:
        r[QCOL["best_bid_price"]] = r[QCOL["best_ask_price"]] + 0.01
    out[10][QCOL["mark_iv"]] = -5.0
    write(migrated_db_url, QUOTES, [tuple(r) for r in out])
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO universe_versions (venue, currency, created_at, instruments, subscribed) "
                     "VALUES ('deribit', 'ETH', %s, 2, %s)",
                     (D0407 - timedelta(days=1), ["ETH-9APR21-1950-C", "ETH-16APR21-1600-C"]))
    half = len({r[Q_TS] // 60_000_000 for r in out if r[Q_INSTR] == "ETH-16APR21-1600-C"})
    return {"crossed": [(r[Q_INSTR], dt_us(r[Q_TS])) for r in crossable], "half_minutes": half,
            "bad_iv": (out[10][Q_INSTR], dt_us(out[10][Q_TS]))}


def test_quote_checks_on_synthetic_day(migrated_db_url, synthetic_day):
    result = materialize([trade_gaps], "2021-04-07", resources(migrated_db_url), with_checks=True)
    checks = check_results(result)
    cov = _meta(checks["quote_coverage"])
    assert not checks["quote_coverage"].passed
    assert cov["instruments"] == 2 and cov["below_threshold"] == 1
    assert cov["coverage"] == {"ETH-16APR21-1600-C": round(synthetic_day["half_minutes"] / 1440, 6)}
    assert 0.45 < synthetic_day["half_minutes"] / 1440 < 0.55

    crossed = checks["crossed_quotes"]
    assert not crossed.passed and crossed.severity == WARN
    meta = _meta(crossed)
    assert meta["crossed"] == 3
    assert [(s["instrument_name"], s["exchange_ts"]) for s in meta["samples"]] == [
        (n, ts.isoformat()) for n, ts in sorted(synthetic_day["crossed"], key=lambda x: x[1])]

    rng = checks["quotes_in_range"]
    assert not rng.passed and rng.severity == ERROR
    assert _meta(rng)["violations"] == {"mark_iv outside [0, 1000]": 1}
    assert [(s["instrument_name"], s["mark_iv"]) for s in _meta(rng)["samples"]] == [
        (synthetic_day["bad_iv"][0], -5.0)]
    assert checks["quote_freshness"].passed  # the last copy ends seconds before midnight


def test_trade_checks_after_backfill(migrated_db_url, trades_days, emu_trades):
    # An extra trade 5 numbers past the perpetual's last one: a hole REST cannot fill.
    last = max((t for t in trades_days["full"] if t.instrument_name == "BTC-PERPETUAL"),
               key=lambda t: t.trade_seq)
    ghost = m.Trade(trade_id="999000001", instrument_name="BTC-PERPETUAL", timestamp=last.timestamp + 10,
                    price=last.price, amount=10.0, direction="buy", trade_seq=last.trade_seq + 5)
    write(migrated_db_url, TRADES, trade_rows([ghost]))
    res = resources(migrated_db_url, emu_trades.rest_url, **BTC)
    materialize([trade_gaps], "2026-08-17", res)
    result = materialize([trades_backfill], "2026-08-17", res, with_checks=True)
    checks = check_results(result)
    assert set(checks) == {"trades_no_duplicates", "trade_seq_continuity", "trades_in_range", "trade_coverage"}
    dup = checks["trades_no_duplicates"]
    assert dup.passed and dup.severity == ERROR
    assert checks["trades_in_range"].passed

    # trade_coverage: the day's trades the stream delivered vs those the backfill added
    with psycopg.connect(migrated_db_url) as conn:
        ws, rest = conn.execute(
            "SELECT count(*) FILTER (WHERE source = 'ws'), count(*) FILTER (WHERE source = 'rest') "
            "FROM trades WHERE venue = 'deribit' AND exchange_ts >= %s AND exchange_ts < %s",
            (D0817, D0817 + timedelta(days=1))).fetchone()
        lost = conn.execute("SELECT count(*) FROM data_gaps WHERE venue = 'deribit' AND stream = 'trades' "
                            "AND status = 'unrecoverable' AND gap_start < %s AND gap_end > %s",
                            (D0817 + timedelta(days=1), D0817)).fetchone()[0]
    cov = _meta(checks["trade_coverage"])
    assert rest > 0 and (cov["from_stream"], cov["from_rest"], cov["trades"]) == (ws, rest, ws + rest)
    assert cov["stream_share"] == round(ws / (ws + rest), 6)
    assert checks["trade_coverage"].passed == (ws / (ws + rest) >= 0.99)
    assert checks["trade_coverage"].severity == WARN
    assert cov["unrecoverable_gaps"] == lost >= 1 and cov["complete"] is False   # the ghost's hole

    cont = checks["trade_seq_continuity"]
    assert not cont.passed and cont.severity == WARN
    meta = _meta(cont)
    assert (meta["holes"], meta["missing_trades"], meta["unrecoverable_holes"]) == (1, 4, 1)
    [hole] = meta["holes_list"]
    assert (hole["instrument_name"], hole["seq_from"], hole["seq_to"], hole["status"]) == (
        "BTC-PERPETUAL", last.trade_seq + 1, last.trade_seq + 4, "unrecoverable")
    assert meta["open_trade_gaps"] == 0

    # Rows the natural key (exchange_ts, venue, instrument, trade_id) lets in but the checks
    # catch: the same trade id again 1 ms later, another trade id with an existing trade_seq,
    # and an IV of 1500 % (the decoder accepts |iv| <= 1e6).
    twin = trade_rows([last])[0]
    twin = twin[:4] + (twin[4] + 1000,) + twin[5:]
    put = next(t for t in trades_days["live"] if t.instrument_name == "BTC-17AUG26-62500-P"
               and t.timestamp >= D0817.timestamp() * 1000)
    seq_twin = msgspec.structs.replace(put, trade_id="999000002", timestamp=put.timestamp + 1)
    bad_iv = msgspec.structs.replace(put, trade_id="999000003", trade_seq=None, iv=1500.0)
    write(migrated_db_url, TRADES, [twin] + trade_rows([seq_twin, bad_iv]))
    checks = check_results(materialize([trades_backfill], "2026-08-17", res, with_checks=True))
    dup = checks["trades_no_duplicates"]
    assert not dup.passed and dup.severity == ERROR
    meta = _meta(dup)
    assert (meta["duplicate_trade_ids"], meta["duplicate_trade_seqs"]) == (1, 1)
    assert meta["samples"] == [
        {"venue": "deribit", "instrument_name": "BTC-PERPETUAL", "trade_id": last.trade_id, "copies": 2},
        {"venue": "deribit", "instrument_name": "BTC-17AUG26-62500-P", "trade_seq": put.trade_seq,
         "trade_ids": 2}]
    rng = checks["trades_in_range"]
    assert not rng.passed and rng.severity == ERROR
    assert _meta(rng)["violations"] == {"iv outside [0, 1000]": 1}
    assert [(s["instrument_name"], s["iv"]) for s in _meta(rng)["samples"]] == [
        ("BTC-17AUG26-62500-P", 1500.0)]


def test_quote_duplicates_fail_the_check(migrated_db_url, quotes_day):
    """The natural key of quotes is exactly what the check counts, so duplicates exist only
    where the unique constraint is missing (a restore without constraints, a table made by
    hand): this throwaway database loses it, then three captured quotes are stored twice."""
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("ALTER TABLE quotes DROP CONSTRAINT quotes_natural_key")
        copied = conn.execute(
            "INSERT INTO quotes SELECT * FROM (SELECT * FROM quotes ORDER BY exchange_ts, "
            "instrument_name LIMIT 3) q RETURNING instrument_name, exchange_ts").fetchall()
        total = conn.execute("SELECT count(*) FROM quotes").fetchone()[0]
    [quotes_no_duplicates] = [c for c in checks_of("deribit/trade_gaps")
                              if {k.name for k in c.check_keys} == {"quotes_no_duplicates"}]
    result = dg.materialize([trade_gaps, quotes_no_duplicates], partition_key="2021-04-05",
                            resources=resources(migrated_db_url),
                            instance=dg.DagsterInstance.ephemeral())
    dup = check_results(result)["quotes_no_duplicates"]
    assert not dup.passed and dup.severity == ERROR
    meta = _meta(dup)
    assert (meta["quotes"], meta["duplicate_keys"]) == (total, 3)
    assert sorted((s["instrument_name"], s["exchange_ts"], s["copies"]) for s in meta["samples"]) == sorted(
        (n, ts.isoformat(), 2) for n, ts in copied)


def test_open_interest_vs_rest_current_day(migrated_db_url, deribit_dir, emu_trades, monkeypatch):
    """2021-04-05 as the current day, the clock pinned 20 s after the capture's last quote: the
    current-day checks evaluate for real, whatever the wall clock says."""
    rows = capture_quote_rows(deribit_dir / CAPTURE_0405)
    write(migrated_db_url, QUOTES, rows)
    now = dt_us(max(r[Q_TS] for r in rows)) + timedelta(seconds=20)
    assert D0405 <= dt_us(min(r[Q_TS] for r in rows)) and now < D0406
    monkeypatch.setattr(days, "utcnow", lambda: now)
    result = materialize([trade_gaps], "2021-04-05", resources(migrated_db_url, emu_trades.rest_url),
                         with_checks=True)
    checks = check_results(result)
    oi = _meta(checks["open_interest_vs_rest"])
    assert checks["open_interest_vs_rest"].passed and oi["evaluated"] is True
    eth = {r[Q_INSTR] for r in rows if r[Q_INSTR].startswith("ETH-")}
    assert oi["instruments_compared"] == len(eth) == 7
    assert oi["relative_difference"] == 0.0
    fresh = _meta(checks["quote_freshness"])
    assert checks["quote_freshness"].passed and fresh["current_day"] is True
    assert fresh["age_s"] == 20.0
    assert fresh["reference_time"] == now.isoformat()

    # The comparison itself: 10 % more open interest at the venue fails a 5 % tolerance.
    with psycopg.connect(migrated_db_url) as conn:
        quoted = quality.latest_open_interest(conn, "deribit", D0405, D0406)
    assert not quality.open_interest_vs_rest(quoted, {n: v * 1.1 for n, v in quoted.items()}).passed
