"""Freshness and row counts of the tables the collector writes (for the observation sensor).

Cheap enough to run every minute on a large database: the newest timestamp comes from an index
(every table has one leading with its time column), totals are the planner's estimates
(``approximate_row_count`` on hypertables, ``pg_class.reltuples`` otherwise; exact below
100k rows), and the exact count of the last hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

#: Below this estimate the total is counted exactly (small or never-analysed tables).
EXACT_BELOW = 100_000

#: table -> time column used for freshness.
TIME_COLUMNS: dict[str, str] = {
    "quotes": "exchange_ts",
    "trades": "exchange_ts",
    "connection_events": "event_ts",
    "rejected_messages": "received_at",
    "collector_status": "heartbeat_at",
}


@dataclass(frozen=True)
class TableStats:
    """One observation of a table.

    Attributes:
        latest: newest value of its time column (None when empty).
        lag_s: seconds from ``latest`` to the database's now() (None when empty).
        rows_estimate: approximate total rows.
        rows_last_hour: exact rows whose time column is within the last hour.
    """

    table: str
    latest: datetime | None
    lag_s: float | None
    rows_estimate: int
    rows_last_hour: int


def table_stats(conn: psycopg.Connection, table: str) -> TableStats:
    """Observe one table of :data:`TIME_COLUMNS`.

    Raises:
        KeyError: ``table`` is not one of them.
    """
    col = TIME_COLUMNS[table]
    latest, now = conn.execute(f"SELECT max({col}), now() FROM {table}").fetchone()
    hyper = _has_timescale(conn) and conn.execute(
        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s)",
        (table,)).fetchone()[0]
    if hyper:
        estimate = conn.execute("SELECT approximate_row_count(%s::regclass)", (table,)).fetchone()[0]
    else:
        estimate = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
                                (table,)).fetchone()[0]
    if (estimate or 0) < EXACT_BELOW:
        estimate = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    recent = conn.execute(f"SELECT count(*) FROM {table} WHERE {col} >= %s",
                          (now - timedelta(hours=1),)).fetchone()[0]
    lag = None if latest is None else (now - latest).total_seconds()
    return TableStats(table, latest, lag, int(estimate or 0), recent)


def _has_timescale(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
                        ).fetchone()[0]
