"""OHLCV candles from ``trades`` for one UTC day, upserted into ``candles``.

1m candles are computed from the trades of the day; 5m, 15m, 1h and 1d are rolled up from the
1m rows (a day is a whole number of each width, so a day partition is self-contained). Per
bucket: open/close = price of the first/last trade ordered by (exchange_ts, trade_seq,
trade_id) (deterministic when several trades share a millisecond, which TimescaleDB's
``first()``/``last()`` are not), high/low = max/min price, volume = sum(amount), notional =
sum(price * amount), vwap = notional / volume, trade_count, first/last trade time. Only buckets
with trades exist.

Bucketing uses ``time_bucket`` when the TimescaleDB extension is installed in the database and
PostgreSQL's ``date_bin`` (origin 2000-01-01 00:00 UTC) otherwise; both align buckets to UTC
midnight, so the results are identical.

Idempotent: a run upserts every bucket of the day and deletes the day's buckets it did not
produce (all in one transaction), so re-materialising a day after a backfill updates it.

TimescaleDB continuous aggregates (Timescale-licensed edition only) could maintain the 1m
candles incrementally; they are not used because the Apache edition lacks them and a daily
batch over one day of trades takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date

import psycopg

from collector_daemon.core.days import day_window

#: Candle interval label -> PostgreSQL interval. 1m first: the others roll up from it.
INTERVALS: dict[str, str] = {
    "1m": "1 minute", "5m": "5 minutes", "15m": "15 minutes", "1h": "1 hour", "1d": "1 day",
}

_UPDATE = ("open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, "
           "volume = EXCLUDED.volume, notional = EXCLUDED.notional, vwap = EXCLUDED.vwap, "
           "trade_count = EXCLUDED.trade_count, first_trade_ts = EXCLUDED.first_trade_ts, "
           "last_trade_ts = EXCLUDED.last_trade_ts, updated_at = EXCLUDED.updated_at")
_COLS = ("venue, instrument_name, interval, bucket_start, open, high, low, close, volume, notional, "
         "vwap, trade_count, first_trade_ts, last_trade_ts, updated_at")


def has_timescaledb(conn: psycopg.Connection) -> bool:
    """True when the timescaledb extension is installed in this database."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
                        ).fetchone()[0]


def bucket_expr(width: str, column: str, timescale: bool) -> str:
    """SQL bucketing ``column`` into ``width`` (a literal from :data:`INTERVALS`)."""
    if width not in INTERVALS.values():
        raise ValueError(f"unknown candle width {width!r}")
    if timescale:
        return f"time_bucket(INTERVAL '{width}', {column})"
    return f"date_bin(INTERVAL '{width}', {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


@dataclass
class CandleReport:
    """Result of :func:`build_candles`: rows upserted per interval, stale rows deleted."""

    day: date
    bucket_function: str
    trades: int = 0
    instruments: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    deleted: int = 0
    seconds: float = 0.0


class CandleError(RuntimeError):
    """The day's candles cannot be rebuilt from the trades in the database."""


def build_candles(conn: psycopg.Connection, day: str | date) -> CandleReport:
    """Compute and upsert every candle interval of ``day`` (all venues and instruments).

    Raises:
        CandleError: the day's trades were exported with more rows than the database holds now
            (retention dropped them; a later backfill added a few back): rebuilding would replace
            the day's candles with candles of those few trades. Nothing is changed.
    """
    started = time.monotonic()
    start, end = day_window(day)
    ts = has_timescaledb(conn)
    report = CandleReport(start.date(), "time_bucket" if ts else "date_bin")
    p = {"start": start, "end": end}
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tickvault_candles:' || %s))",
                     (start.date().isoformat(),))
        report.trades, report.instruments = conn.execute(
            "SELECT count(*), count(DISTINCT (venue, instrument_name)) FROM trades "
            "WHERE exchange_ts >= %(start)s AND exchange_ts < %(end)s", p).fetchone()
        exported = conn.execute(
            "SELECT coalesce(sum(source_rows), 0) FROM export_manifest "
            "WHERE table_name = 'trades' AND day = %(day)s", {"day": start.date()}).fetchone()[0]
        if exported > report.trades:
            raise CandleError(
                f"candles of {start.date()}: the day's trades were exported with {exported} rows but "
                f"the database holds {report.trades} now (dropped by retention); not rebuilding "
                "candles from a partial day")
        report.rows["1m"] = conn.execute(f"""
            INSERT INTO candles ({_COLS})
            SELECT venue, instrument_name, '1m', {bucket_expr('1 minute', 'exchange_ts', ts)} AS b,
                   (array_agg(price ORDER BY exchange_ts, trade_seq, trade_id))[1],
                   max(price), min(price),
                   (array_agg(price ORDER BY exchange_ts DESC, trade_seq DESC, trade_id DESC))[1],
                   sum(amount), sum(price * amount), sum(price * amount) / nullif(sum(amount), 0),
                   count(*), min(exchange_ts), max(exchange_ts), now()
            FROM trades WHERE exchange_ts >= %(start)s AND exchange_ts < %(end)s
            GROUP BY venue, instrument_name, b
            ON CONFLICT (venue, instrument_name, interval, bucket_start) DO UPDATE SET {_UPDATE}
            """, p).rowcount
        # Stale 1m rows must go before the rollups read them.
        report.deleted = conn.execute(
            "DELETE FROM candles WHERE interval = '1m' AND bucket_start >= %(start)s "
            "AND bucket_start < %(end)s AND updated_at <> now()", p).rowcount
        for label, width in INTERVALS.items():
            if label == "1m":
                continue
            report.rows[label] = conn.execute(f"""
                INSERT INTO candles ({_COLS})
                SELECT venue, instrument_name, %(label)s, {bucket_expr(width, 'bucket_start', ts)} AS b,
                       (array_agg(open ORDER BY bucket_start))[1], max(high), min(low),
                       (array_agg(close ORDER BY bucket_start DESC))[1],
                       sum(volume), sum(notional), sum(notional) / nullif(sum(volume), 0),
                       sum(trade_count), min(first_trade_ts), max(last_trade_ts), now()
                FROM candles
                WHERE interval = '1m' AND bucket_start >= %(start)s AND bucket_start < %(end)s
                GROUP BY venue, instrument_name, b
                ON CONFLICT (venue, instrument_name, interval, bucket_start) DO UPDATE SET {_UPDATE}
                """, {**p, "label": label}).rowcount
        report.deleted += conn.execute(
            "DELETE FROM candles WHERE bucket_start >= %(start)s AND bucket_start < %(end)s "
            "AND updated_at <> now()", p).rowcount
    report.seconds = time.monotonic() - started
    return report
