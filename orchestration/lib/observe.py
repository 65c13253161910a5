"""Freshness and row counts of the tables the collector writes (for the observation sensor).

Which tables, and their time columns, come from the external assets
(``orchestration.defs.assets.stream``): the shared collector tables and every recorded venue's
own stream tables (Bybit's ``bybit_tickers``, ``bybit_trades``), each observed with its venues
(:func:`table_venues`: Deribit and Kraken in ``trades``, Deribit in ``quotes``, Bybit in its
own), so a venue whose stream stopped shows even when another venue keeps a shared table fresh.

Cheap enough to run every minute on a large database: the newest timestamp comes from an index
(every table has one leading with its time column), totals are the planner's estimates
(``approximate_row_count`` on hypertables, ``pg_class.reltuples`` otherwise; exact below
100k rows), and the exact count of the last hour (per venue: one grouped count over that hour).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from collector_daemon.venues import get_venue

#: Below this estimate the total is counted exactly (small or never-analysed tables).
EXACT_BELOW = 100_000


@dataclass(frozen=True)
class VenueStats:
    """One venue's rows of a table in the last hour.

    Attributes:
        rows_last_hour: exact rows of the venue whose time column is within the last hour.
        latest: newest value of the time column among them (None: no row in the last hour).
        lag_s: seconds from ``latest`` to the database's now() (None without a row).
    """

    rows_last_hour: int
    latest: datetime | None
    lag_s: float | None


@dataclass(frozen=True)
class TableStats:
    """One observation of a table.

    Attributes:
        latest: newest value of its time column (None when empty).
        lag_s: seconds from ``latest`` to the database's now() (None when empty).
        rows_estimate: approximate total rows.
        rows_last_hour: exact rows whose time column is within the last hour.
        by_venue: venue -> :class:`VenueStats`, for each venue asked for.
    """

    table: str
    latest: datetime | None
    lag_s: float | None
    rows_estimate: int
    rows_last_hour: int
    by_venue: dict[str, VenueStats] = field(default_factory=dict)


def table_venues(venues: Iterable[str]) -> dict[str, list[str]]:
    """Stream table -> the venues among ``venues`` that write it (their ``StreamSpec`` tables),
    in the order given.

    Raises:
        collector_daemon.venues.UnknownVenue: a name is not registered.
    """
    out: dict[str, list[str]] = {}
    for venue in venues:
        for table in dict.fromkeys(s.table.name for s in get_venue(venue).stream_specs()):
            out.setdefault(table, []).append(venue)
    return out


def table_stats(conn: psycopg.Connection, table: str, time_column: str,
                venues: Sequence[str] = ()) -> TableStats:
    """Observe ``table`` by its ``time_column`` (identifiers, quoted); with ``venues``, also each
    venue's rows of the last hour (the table needs a ``venue`` column then).

    Raises:
        psycopg.errors.UndefinedTable / UndefinedColumn: no such table or column.
    """
    t, col = sql.Identifier(table), sql.Identifier(time_column)
    latest, now = conn.execute(sql.SQL("SELECT max({}), now() FROM {}").format(col, t)).fetchone()
    hyper = _has_timescale(conn) and conn.execute(
        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s)",
        (table,)).fetchone()[0]
    if hyper:
        estimate = conn.execute("SELECT approximate_row_count(%s::regclass)", (table,)).fetchone()[0]
    else:
        estimate = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
                                (table,)).fetchone()[0]
    if (estimate or 0) < EXACT_BELOW:
        estimate = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0]
    since = now - timedelta(hours=1)
    recent = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s").format(t, col),
                          (since,)).fetchone()[0]
    by_venue: dict[str, VenueStats] = {}
    if venues:
        seen = {v: (n, last) for v, n, last in conn.execute(
            sql.SQL("SELECT venue, count(*), max({col}) FROM {t} WHERE {col} >= %s AND venue = ANY(%s) "
                    "GROUP BY venue").format(col=col, t=t), (since, list(venues))).fetchall()}
        for v in venues:
            n, last = seen.get(v, (0, None))
            by_venue[v] = VenueStats(n, last, None if last is None else (now - last).total_seconds())
    lag = None if latest is None else (now - latest).total_seconds()
    return TableStats(table, latest, lag, int(estimate or 0), recent, by_venue)


def _has_timescale(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
                        ).fetchone()[0]
