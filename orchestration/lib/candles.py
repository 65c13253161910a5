"""OHLCV candles from every venue's trades for one UTC day, upserted into ``candles``.

Each registered venue's trades come from its ``trades`` stream's table
(:meth:`collector_daemon.venues.Venue.trades_table`: the shared ``trades`` for Deribit and
Kraken, ``bybit_trades`` for Bybit), read with the columns every such table has (``venue``,
``instrument_name``, ``exchange_ts``, ``price``, ``amount``) and ordered within a millisecond by
the venue's :attr:`~collector_daemon.venues.Venue.trade_order` (Deribit and Kraken
``trade_seq, trade_id``; Bybit ``cross_seq, trade_id``).

Intervals (:data:`INTERVALS`): 1m, 5m, 15m, 30m, 1h, 4h, 12h, 1d and 1w. 1m candles are computed
from the trades of the day; 5m .. 1d are rolled up from the day's 1m rows (a day is a whole
number of each width, so a day partition is self-contained); 1w (weeks start Monday 00:00 UTC)
is rolled up from the 1d rows of the day's week, so every day's run refreshes its week. Per
bucket: open/close = price of the first/last trade ordered by (exchange_ts, the venue's
trade_order) (deterministic when several trades share a millisecond, which TimescaleDB's
``first()``/``last()`` are not), high/low = max/min price, volume = sum(amount), notional =
sum(price * amount), vwap = notional / volume (computed in the trades' own type: exact
``numeric`` for Bybit's decimal strings, then stored as double precision), trade_count, first/last trade time. Only buckets
with trades exist. The rollups sum volume and notional (exact sums over the bucket's trades, up
to floating-point association), so a wide bucket's VWAP is its trades' Σ(price·amount)/Σ(amount),
never an average of narrower VWAPs.

Bucketing uses ``time_bucket`` when the TimescaleDB extension is installed in the database and
PostgreSQL's ``date_bin`` otherwise, both with an explicit origin (Monday 2000-01-03 00:00 UTC),
so buckets align to UTC midnight (weeks to Monday) and the results are identical.

Idempotent: a run upserts every bucket of the day and deletes the day's buckets it did not
produce (all in one transaction), so re-materialising a day after a backfill updates it.

TimescaleDB continuous aggregates (Timescale-licensed edition only) could maintain the 1m
candles incrementally; they are not used because the Apache edition lacks them and a daily
batch over one day of trades takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg
from psycopg import sql

from collector_daemon.core.days import day_window
from collector_daemon.venues import venues

#: Candle interval label -> PostgreSQL interval. 1m first: the day's others roll up from it,
#: 1w last: it rolls up from 1d.
INTERVALS: dict[str, str] = {
    "1m": "1 minute", "5m": "5 minutes", "15m": "15 minutes", "30m": "30 minutes",
    "1h": "1 hour", "4h": "4 hours", "12h": "12 hours", "1d": "1 day", "1w": "1 week",
}
#: The intervals whose buckets lie within one UTC day (rolled up from 1m in the day's run).
DAY_INTERVALS: tuple[str, ...] = tuple(k for k in INTERVALS if k != "1w")
#: Origin of every bucket: a Monday at UTC midnight (weeks start on Monday, ISO 8601).
ORIGIN = "2000-01-03 00:00:00+00"

_UPDATE = ("open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, "
           "volume = EXCLUDED.volume, notional = EXCLUDED.notional, vwap = EXCLUDED.vwap, "
           "trade_count = EXCLUDED.trade_count, first_trade_ts = EXCLUDED.first_trade_ts, "
           "last_trade_ts = EXCLUDED.last_trade_ts, updated_at = EXCLUDED.updated_at")
_COLS = ("venue, instrument_name, interval, bucket_start, open, high, low, close, volume, notional, "
         "vwap, trade_count, first_trade_ts, last_trade_ts, updated_at")


@dataclass(frozen=True)
class TradeSource:
    """One trades table the candles read, with the venues whose trades it holds.

    Attributes:
        table: table name (a venue's ``trades`` stream table).
        order: columns ordering trades within one ``exchange_ts`` (the venues' ``trade_order``).
        venues: the registered venues whose ``trades`` stream writes ``table``.
    """

    table: str
    order: tuple[str, ...]
    venues: tuple[str, ...]

    def select(self, columns: str) -> sql.Composed:
        """``SELECT columns FROM table WHERE venue IN venues AND exchange_ts >= %(start)s AND
        exchange_ts < %(end)s`` (bind ``start``, ``end``: UTC datetimes)."""
        return sql.SQL("SELECT {} FROM {} WHERE venue = ANY({}) AND exchange_ts >= %(start)s "
                       "AND exchange_ts < %(end)s").format(
            sql.SQL(columns), sql.Identifier(self.table), sql.Literal(list(self.venues)))


def trade_sources() -> list[TradeSource]:
    """The registered venues' trades tables, venues sharing a table (and order) together.

    Raises:
        ValueError: two venues write one table but order its trades differently.
    """
    by_table: dict[str, TradeSource] = {}
    for name, venue in sorted(venues().items()):
        table = venue.trades_table()
        if table is None:
            continue
        order = tuple(venue.trade_order)
        missing = [c for c in ("price", "amount", *order) if c not in table.columns]
        if missing:
            raise ValueError(f"venue {name}: trades table {table.name} lacks {missing}")
        prev = by_table.get(table.name)
        if prev is not None and prev.order != order:
            raise ValueError(f"venues {prev.venues} and {name} order {table.name} differently")
        by_table[table.name] = TradeSource(table.name, order,
                                           (*(prev.venues if prev else ()), name))
    return list(by_table.values())


def _rollup(conn: psycopg.Connection, label: str, source: str, ts: bool, window: dict) -> int:
    """Upsert the ``label`` candles of ``window`` rolled up from its ``source`` candles."""
    return conn.execute(f"""
        INSERT INTO candles ({_COLS})
        SELECT venue, instrument_name, %(label)s, {bucket_expr(INTERVALS[label], 'bucket_start', ts)} AS b,
               (array_agg(open ORDER BY bucket_start))[1], max(high), min(low),
               (array_agg(close ORDER BY bucket_start DESC))[1],
               sum(volume), sum(notional), sum(notional) / nullif(sum(volume), 0),
               sum(trade_count), min(first_trade_ts), max(last_trade_ts), now()
        FROM candles
        WHERE interval = %(source)s AND bucket_start >= %(start)s AND bucket_start < %(end)s
        GROUP BY venue, instrument_name, b
        ON CONFLICT (venue, instrument_name, interval, bucket_start) DO UPDATE SET {_UPDATE}
        """, {**window, "label": label, "source": source}).rowcount


def has_timescaledb(conn: psycopg.Connection) -> bool:
    """True when the timescaledb extension is installed in this database."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
                        ).fetchone()[0]


def bucket_expr(width: str, column: str, timescale: bool) -> str:
    """SQL bucketing ``column`` into ``width`` (a literal from :data:`INTERVALS`)."""
    if width not in INTERVALS.values():
        raise ValueError(f"unknown candle width {width!r}")
    if timescale:
        return f"time_bucket(INTERVAL '{width}', {column}, TIMESTAMPTZ '{ORIGIN}')"
    return f"date_bin(INTERVAL '{width}', {column}, TIMESTAMPTZ '{ORIGIN}')"


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
    """Compute and upsert every candle interval of ``day`` (all venues and instruments, from
    each venue's trades table: :func:`trade_sources`).

    Raises:
        CandleError: a venue's trades of the day were exported with more rows than the database holds now
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
        report.rows["1m"] = 0
        for src in trade_sources():
            n, k = conn.execute(src.select("count(*), count(DISTINCT (venue, instrument_name))"),
                                p).fetchone()
            report.trades += n
            report.instruments += k
            per_venue = dict(conn.execute(src.select("venue, count(*)") + sql.SQL(" GROUP BY venue"),
                                          p).fetchall())
            for venue, exported in conn.execute(
                    "SELECT venue, sum(source_rows) FROM export_manifest WHERE table_name = %s "
                    "AND day = %s AND venue = ANY(%s) GROUP BY venue",
                    (src.table, start.date(), list(src.venues))).fetchall():
                if exported > per_venue.get(venue, 0):
                    raise CandleError(
                        f"candles of {start.date()}: {venue}'s {src.table} of the day were exported "
                        f"with {exported} rows but the database holds {per_venue.get(venue, 0)} now "
                        "(dropped by retention); not rebuilding candles from a partial day")
            asc = ", ".join(["exchange_ts", *src.order])
            desc = ", ".join(f"{c} DESC" for c in ["exchange_ts", *src.order])
            report.rows["1m"] += conn.execute(sql.SQL(f"""
                INSERT INTO candles ({_COLS})
                {{}}
                GROUP BY venue, instrument_name, b
                ON CONFLICT (venue, instrument_name, interval, bucket_start) DO UPDATE SET {_UPDATE}
                """).format(src.select(f"""
                venue, instrument_name, '1m', {bucket_expr('1 minute', 'exchange_ts', ts)} AS b,
                (array_agg(price ORDER BY {asc}))[1], max(price), min(price),
                (array_agg(price ORDER BY {desc}))[1],
                sum(amount), sum(price * amount), sum(price * amount) / nullif(sum(amount), 0),
                count(*), min(exchange_ts), max(exchange_ts), now()""")), p).rowcount
        # Stale 1m rows must go before the rollups read them.
        report.deleted = conn.execute(
            "DELETE FROM candles WHERE interval = '1m' AND bucket_start >= %(start)s "
            "AND bucket_start < %(end)s AND updated_at <> now()", p).rowcount
        for label in DAY_INTERVALS[1:]:
            report.rows[label] = _rollup(conn, label, "1m", ts, p)
        report.deleted += conn.execute(
            "DELETE FROM candles WHERE bucket_start >= %(start)s AND bucket_start < %(end)s "
            "AND interval <> '1w' AND updated_at <> now()", p).rowcount
        # The day's week, from its 1d rows (the other days' come from their own runs).
        week = conn.execute(f"SELECT {bucket_expr(INTERVALS['1w'], '%(start)s::timestamptz', ts)}",
                            p).fetchone()[0]
        wp = {"start": week, "end": week + timedelta(days=7)}
        report.rows["1w"] = _rollup(conn, "1w", "1d", ts, wp)
        report.deleted += conn.execute(
            "DELETE FROM candles WHERE interval = '1w' AND bucket_start = %(start)s "
            "AND updated_at <> now()", wp).rowcount
    report.seconds = time.monotonic() - started
    return report
