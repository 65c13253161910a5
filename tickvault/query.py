"""Read candles, trades and quotes back as polars DataFrames, from the database and, for days
retention has dropped, from the Parquet archive the nightly export wrote.

Usage::

    from tickvault import query
    with query.Client.from_env() as q:          # TICKVAULT_DATABASE_URL, TICKVAULT_EXPORT_*
        df = q.candles("kraken", "ETH/USD", "1d", "2016-01-01", "2016-02-01")

or the module functions (``query.candles(...)``), which use a client from the environment.

**Ranges.** ``start`` inclusive, ``end`` exclusive, UTC: a ``datetime`` (naive = UTC), a
``date`` (its UTC midnight) or an ISO 8601 string (``2016-01-01``, ``2016-01-01T12:00``,
``2016-01-01T12:00:00+02:00``). Every timestamp column of a result is ``Datetime("us", "UTC")``.

**Validation.** ``venue`` must be a known venue (:func:`allowed_venues`: the registry
``collector_daemon.venues.venues()`` plus the venues with a history importer, e.g. ``kraken``),
``interval`` one of :data:`INTERVALS`, ``symbol`` an instrument name of letters, digits and
``-_./:`` (at most 64): anything else raises ``ValueError`` naming what is allowed. Values reach
SQL only as bound parameters.

**Database and archive.** Rows come from the database. A UTC day whose export is verified
(``export_manifest.verified_at``) while the database holds fewer of its rows than were exported
(retention dropped them) is read from the export's Parquet files, located by the manifest's
object keys (``<prefix>/venue=/table=/date=/part-<n>.parquet``, orchestration/lib/export), in
the local export directory or S3/B2; any of its rows still (or again) in the database are
merged, and rows equal on the table's unique key appear once. Both parts have the table's
columns and types (an older file lacking a newer column gets nulls), sorted like the export
(instrument, then the key's time and id columns).

**Columns** (the tables' own, see schema/*.sql for units):

* candles: venue, instrument_name, interval, bucket_start (start of the bucket), open, high,
  low, close (price currency of the instrument), volume (sum of amounts), notional
  (sum of price x amount), vwap (notional / volume), trade_count, first_trade_ts, last_trade_ts.
* trades: venue, instrument_name, trade_id, trade_seq, exchange_ts, receive_ts, price, amount,
  direction (taker side; NULL if the source does not say), iv, mark_price, index_price,
  tick_direction, liquidation, block_trade_id, source (ws/rest/csv), ord_type.
* quotes: venue, instrument_name, exchange_ts, receive_ts, best_bid_price, best_bid_amount,
  best_ask_price, best_ask_amount, mark_price, mark_iv, bid_iv, ask_iv, underlying_price,
  underlying_index, index_price, open_interest, last_price, delta, gamma, vega, theta, rho,
  interest_rate, state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from collector_daemon.venues import venues
from orchestration.lib.candles import INTERVALS as _CANDLE_INTERVALS
from orchestration.lib.export import ObjectStore, TableLayout, make_store, table_layout

#: Candle intervals :func:`candles` accepts.
INTERVALS: tuple[str, ...] = tuple(_CANDLE_INTERVALS)

#: Venues whose history can be imported before (or without) a live venue plug-in.
HISTORY_VENUES: tuple[str, ...] = ("kraken",)

#: Columns of the tables left out of results (bookkeeping).
_HIDDEN = {"candles": ("updated_at",)}

_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,63}$")


def allowed_venues() -> tuple[str, ...]:
    """Venue names the API accepts: every registered venue plus :data:`HISTORY_VENUES`."""
    return tuple(sorted(set(venues()) | set(HISTORY_VENUES)))


def check_venue(venue: str) -> str:
    """``venue`` if allowed.

    Raises:
        ValueError: naming the allowed venues.
    """
    allowed = allowed_venues()
    if venue not in allowed:
        raise ValueError(f"unknown venue {venue!r}; allowed: {', '.join(allowed)}")
    return venue


def check_interval(interval: str) -> str:
    """``interval`` if it is a candle interval.

    Raises:
        ValueError: naming the allowed intervals.
    """
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}; allowed: {', '.join(INTERVALS)}")
    return interval


def check_symbol(symbol: str) -> str:
    """``symbol`` if it looks like an instrument name (``ETH/USD``, ``BTC-PERPETUAL``, ``BTCUSDT``).

    Raises:
        ValueError: other characters (quotes, spaces, ``;``), empty or longer than 64.
    """
    if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: an instrument name is 1-64 letters, digits "
                         "and -_./: (e.g. ETH/USD, BTC-PERPETUAL)")
    return symbol


def parse_time(value: str | date | datetime) -> datetime:
    """``value`` as an aware UTC datetime: naive = UTC, a date = its UTC midnight.

    Raises:
        ValueError: not a date, datetime or ISO 8601 string.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"invalid time {value!r}: use ISO 8601, e.g. 2016-01-01 or "
                             "2016-01-01T12:00:00Z") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"invalid time {value!r}: a datetime, date or ISO 8601 string")


def _range(start: Any, end: Any) -> tuple[datetime, datetime]:
    s, e = parse_time(start), parse_time(end)
    if e <= s:
        raise ValueError(f"empty range: end {e.isoformat()} is not after start {s.isoformat()}")
    return s, e


class Client:
    """Queries over one database and its export archive.

    Args:
        dsn: PostgreSQL URL of the tickvault database.
        archive: where the exports are: an :class:`~orchestration.lib.export.ObjectStore`, a
            local export directory, or None (database only; an archived day then raises).
    """

    def __init__(self, dsn: str, archive: ObjectStore | str | os.PathLike | None = None) -> None:
        self._dsn = dsn
        self._conn = adbc.connect(dsn)
        self._archive = make_store(None, lambda: None, os.fspath(archive)) if isinstance(
            archive, (str, os.PathLike)) else archive
        self._layouts: dict[str, TableLayout] = {}

    @classmethod
    def from_env(cls, dsn: str | None = None) -> "Client":
        """A client configured like the export: ``dsn`` or ``TICKVAULT_DATABASE_URL``; the archive from
        ``TICKVAULT_EXPORT_BUCKET`` (+ ``TICKVAULT_S3_ENDPOINT_URL``, ``TICKVAULT_S3_REGION``,
        ``TICKVAULT_S3_ACCESS_KEY_ID``, ``TICKVAULT_S3_SECRET_ACCESS_KEY``) or else
        ``TICKVAULT_EXPORT_LOCAL_DIR`` (default ``.data/export``).

        Raises:
            ValueError: ``TICKVAULT_DATABASE_URL`` is not set.
        """
        from orchestration.resources import ObjectStorageResource
        dsn = dsn or os.environ.get("TICKVAULT_DATABASE_URL")
        if not dsn:
            raise ValueError("TICKVAULT_DATABASE_URL is not set")
        env = os.environ.get
        res = ObjectStorageResource(
            bucket=env("TICKVAULT_EXPORT_BUCKET") or None, endpoint_url=env("TICKVAULT_S3_ENDPOINT_URL"),
            region_name=env("TICKVAULT_S3_REGION"), access_key_id=env("TICKVAULT_S3_ACCESS_KEY_ID"),
            secret_access_key=env("TICKVAULT_S3_SECRET_ACCESS_KEY"),
            local_dir=env("TICKVAULT_EXPORT_LOCAL_DIR") or ".data/export")
        return cls(dsn, make_store(res.bucket, res.client, res.local_dir))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    # ------------------------------------------------------------------------- public API

    def candles(self, venue: str, symbol: str, interval: str, start: Any, end: Any) -> pl.DataFrame:
        """Candles of one instrument and interval whose ``bucket_start`` is in [start, end),
        sorted by ``bucket_start``. Columns: see the module docstring.

        Raises:
            ValueError: unknown venue or interval, invalid symbol or range.
        """
        check_venue(venue)
        check_symbol(symbol)
        check_interval(interval)
        return self._read("candles", venue, symbol, *_range(start, end), interval=interval)

    def trades(self, venue: str, symbol: str, start: Any, end: Any) -> pl.DataFrame:
        """Trades of one instrument with ``exchange_ts`` in [start, end), sorted by
        (exchange_ts, trade_id).

        Raises:
            ValueError: unknown venue, invalid symbol or range.
        """
        check_venue(venue)
        check_symbol(symbol)
        return self._read("trades", venue, symbol, *_range(start, end))

    def quotes(self, venue: str, symbol: str, start: Any, end: Any) -> pl.DataFrame:
        """Quotes of one instrument with ``exchange_ts`` in [start, end), sorted by time.

        Raises:
            ValueError: unknown venue, invalid symbol or range.
        """
        check_venue(venue)
        check_symbol(symbol)
        return self._read("quotes", venue, symbol, *_range(start, end))

    def latest(self, venue: str, symbol: str, kind: str = "trades", n: int = 1) -> pl.DataFrame:
        """The ``n`` most recent rows of ``kind`` (``trades`` or ``quotes``) of one instrument in
        the database, newest first.

        Raises:
            ValueError: unknown venue or kind, invalid symbol, ``n`` not in 1..10000.
        """
        check_venue(venue)
        check_symbol(symbol)
        if kind not in ("trades", "quotes"):
            raise ValueError(f"unknown kind {kind!r}; allowed: trades, quotes")
        if not isinstance(n, int) or not 1 <= n <= 10_000:
            raise ValueError(f"n must be an integer in 1..10000, not {n!r}")
        layout = self._layout(kind)
        cols = self._columns(kind)
        table = self._fetch(
            f"SELECT {', '.join(cols)} FROM {kind} WHERE venue = $1 AND instrument_name = $2 "
            f"ORDER BY {', '.join(c + ' DESC' for c in layout.sort_key[1:])} LIMIT $3",
            [venue, symbol, n])
        return pl.from_arrow(self._conform(table, kind))

    def symbols(self, venue: str) -> pl.DataFrame:
        """Instrument names of ``venue`` with data or reference data, sorted: columns
        ``instrument_name``, ``kind`` (from ``instruments``; null when only data exists),
        ``is_active`` (null likewise).

        Raises:
            ValueError: unknown venue.
        """
        check_venue(venue)
        # A loose index scan over trades (one probe per instrument), plus the small tables.
        table = self._fetch("""
            WITH RECURSIVE t AS (
                (SELECT instrument_name FROM trades WHERE venue = $1 ORDER BY instrument_name LIMIT 1)
                UNION ALL
                SELECT (SELECT instrument_name FROM trades WHERE venue = $1
                          AND instrument_name > t.instrument_name ORDER BY instrument_name LIMIT 1)
                FROM t WHERE t.instrument_name IS NOT NULL
            ), names AS (
                SELECT instrument_name FROM t WHERE instrument_name IS NOT NULL
                UNION SELECT instrument_name FROM instruments WHERE venue = $1
                UNION SELECT DISTINCT instrument_name FROM exchange_candles WHERE venue = $1
                UNION SELECT DISTINCT instrument_name FROM candles WHERE venue = $1 AND interval = '1d'
            )
            SELECT n.instrument_name, i.kind, i.is_active FROM names n
            LEFT JOIN instruments i ON i.venue = $1 AND i.instrument_name = n.instrument_name
            ORDER BY n.instrument_name""", [venue])
        return pl.from_arrow(table)

    # ------------------------------------------------------------------------- internals

    def _fetch(self, sql: str, params: Sequence[Any]) -> pa.Table:
        with self._conn.cursor() as cur:
            cur.execute(sql, list(params))
            table = cur.fetch_arrow_table()
        self._conn.rollback()   # read only: end the implicit transaction
        return table

    def _layout(self, table: str) -> TableLayout:
        if table not in self._layouts:
            with psycopg.connect(self._dsn) as conn:
                layout = table_layout(conn, table)
            if layout is None:
                raise ValueError(f"table {table} does not exist: run `tickvault migrate`")
            self._layouts[table] = layout
        return self._layouts[table]

    def _columns(self, table: str) -> list[str]:
        return [c for c in self._layout(table).schema.names if c not in _HIDDEN.get(table, ())]

    def _conform(self, table: pa.Table, name: str) -> pa.Table:
        """``table`` with exactly the result columns and types (missing ones as nulls)."""
        schema = self._layout(name).schema
        cols = self._columns(name)
        arrays = []
        for c in cols:
            field = schema.field(c)
            arrays.append(table.column(c).cast(field.type) if c in table.column_names
                          else pa.nulls(table.num_rows, field.type))
        return pa.Table.from_arrays(arrays, names=cols)

    def _read(self, name: str, venue: str, symbol: str, start: datetime, end: datetime, *,
              interval: str | None = None) -> pl.DataFrame:
        layout = self._layout(name)
        cols = self._columns(name)
        tc = layout.time_column
        where = f"venue = $1 AND instrument_name = $2 AND {tc} >= $3 AND {tc} < $4"
        params: list[Any] = [venue, symbol, start, end]
        if interval is not None:
            where += " AND interval = $5"
            params.append(interval)
        parts = [self._conform(self._fetch(f"SELECT {', '.join(cols)} FROM {name} WHERE {where}",
                                           params), name)]
        for day, keys, sizes in self._archived_days(name, venue, start, end):
            parts.append(self._archive_day(name, venue, symbol, start, end, interval, day, keys, sizes))
        df = pl.from_arrow(pa.concat_tables(parts))
        if len(parts) > 1:
            df = df.unique(subset=list(layout.key), keep="first", maintain_order=True)
        return df.sort([c for c in layout.sort_key if c in df.columns])

    def _archived_days(self, name: str, venue: str, start: datetime,
                       end: datetime) -> list[tuple[date, list[str], list[int]]]:
        """Verified exported days of [start, end) the database holds fewer rows of than the
        export did: ``(day, object keys, object sizes)``."""
        tc = self._layout(name).time_column
        first, last = start.date(), (end - timedelta(microseconds=1)).date()
        table = self._fetch(f"""
            WITH m AS (
                SELECT day, source_rows, object_keys, object_bytes FROM export_manifest
                WHERE table_name = $1 AND venue = $2 AND day >= $3 AND day <= $4
                  AND verified_at IS NOT NULL
            ), d AS (
                SELECT ({tc} AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM {name}
                WHERE venue = $2 AND {tc} >= $5 AND {tc} < $6
                  AND ({tc} AT TIME ZONE 'UTC')::date IN (SELECT day FROM m)
                GROUP BY 1
            )
            SELECT m.day, m.object_keys, m.object_bytes FROM m LEFT JOIN d ON d.day = m.day
            WHERE coalesce(d.n, 0) < m.source_rows ORDER BY m.day""",
            [name, venue, first, last, datetime(first.year, first.month, first.day, tzinfo=UTC),
             datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)])
        return [(r["day"], r["object_keys"], r["object_bytes"]) for r in table.to_pylist()]

    def _archive_day(self, name: str, venue: str, symbol: str, start: datetime, end: datetime,
                     interval: str | None, day: date, keys: list[str], sizes: list[int]) -> pa.Table:
        if self._archive is None:
            raise ValueError(f"{name} of {venue} on {day} are only in the Parquet archive (retention "
                             "dropped them from the database) and no archive is configured")
        tc = self._layout(name).time_column
        filters = [("instrument_name", "=", symbol), (tc, ">=", start), (tc, "<", end)]
        if interval is not None:
            filters.append(("interval", "=", interval))
        tables = []
        for key, size in zip(keys, sizes):
            with self._archive.open(key, size) as fh:
                t = pq.read_table(fh, filters=filters)
            tables.append(t.append_column("venue", pa.array([venue] * t.num_rows, pa.string())))
        return self._conform(pa.concat_tables(tables, promote_options="permissive"), name)


def candles(venue: str, symbol: str, interval: str, start: Any, end: Any) -> pl.DataFrame:
    """:meth:`Client.candles` on a client from the environment (:meth:`Client.from_env`)."""
    with Client.from_env() as client:
        return client.candles(venue, symbol, interval, start, end)


def trades(venue: str, symbol: str, start: Any, end: Any) -> pl.DataFrame:
    """:meth:`Client.trades` on a client from the environment."""
    with Client.from_env() as client:
        return client.trades(venue, symbol, start, end)


def quotes(venue: str, symbol: str, start: Any, end: Any) -> pl.DataFrame:
    """:meth:`Client.quotes` on a client from the environment."""
    with Client.from_env() as client:
        return client.quotes(venue, symbol, start, end)


def latest(venue: str, symbol: str, kind: str = "trades", n: int = 1) -> pl.DataFrame:
    """:meth:`Client.latest` on a client from the environment."""
    with Client.from_env() as client:
        return client.latest(venue, symbol, kind, n)


def symbols(venue: str) -> pl.DataFrame:
    """:meth:`Client.symbols` on a client from the environment."""
    with Client.from_env() as client:
        return client.symbols(venue)
