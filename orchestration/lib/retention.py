"""Retention of the tick tables: drop days older than a configurable age, but only days whose
Parquet export is verified (orchestration/lib/export/verify.py). Every other old day is kept and
reported with the reason.

A day may be dropped when, for every venue with rows that day, the ``export_manifest`` row has
``verified_at`` set and a fresh verification (:func:`export.verify_export`, without the full
download) passes now: row counts equal, objects present with their size and ETag, schema,
sampled rows. The drop itself re-counts the rows under a lock that blocks writes to them and
gives up if the count moved since the verification.

On TimescaleDB whole chunks are dropped (``drop_chunks``), so a chunk goes only when every day
it covers qualifies (quotes and trades have 1-day chunks). On plain PostgreSQL the day is
deleted with ``DELETE``, inside a transaction that rolls back unless exactly the exported number
of rows was deleted.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg

from orchestration.lib.export import (
    ObjectStore,
    TableLayout,
    day_filter,
    manifest_rows,
    quote_ident,
    table_layout,
    verify_export,
)

#: Tables retention applies to by default: the high-volume streams.
RETENTION_TABLES: tuple[str, ...] = ("quotes", "trades")


@dataclass(frozen=True)
class RetentionDecision:
    """What retention did with one unit of storage: a chunk (TimescaleDB) or a day (plain).

    Attributes:
        table: table name.
        days: the UTC days the unit covers.
        rows: rows in the database for those days when decided.
        dropped: True when the rows were dropped.
        reason: why it was kept ("" when dropped).
    """

    table: str
    days: tuple[date, ...]
    rows: int
    dropped: bool
    reason: str = ""


def cutoff_for(now: datetime, max_age_days: int) -> datetime:
    """Start (UTC midnight) of the oldest day that is kept regardless: days before it are old."""
    today = now.astimezone(UTC).date()
    start = today - timedelta(days=max_age_days)
    return datetime(start.year, start.month, start.day, tzinfo=UTC)


def _day_verdict(dsn: str, store: ObjectStore, table: str, day: date,
                 sample_rows: int) -> tuple[int | None, str]:
    """(rows the verified export holds, "") when ``day`` may go, else (None, reason)."""
    with psycopg.connect(dsn) as conn:
        manifests = manifest_rows(conn, table, day)
    unverified = [m.venue for m in manifests if m.verified_at is None]
    if unverified:
        return None, f"export not verified ({', '.join(unverified)})"
    outcomes = verify_export(dsn, store, table, day, deep=False, sample_rows=sample_rows)
    failures = [f for o in outcomes.values() for f in o.failures]
    if failures:
        return None, "verification failed: " + "; ".join(failures[:3])
    return sum(m.source_rows for m in manifests), ""


def _days(start: datetime, end: datetime) -> list[date]:
    """The UTC days that [start, end) touches."""
    first = start.astimezone(UTC).date()
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _hypertable(conn: psycopg.Connection, table: str) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    return conn.execute("SELECT 1 FROM timescaledb_information.hypertables "
                        "WHERE hypertable_name = %s", (table,)).fetchone() is not None


def apply_retention(dsn: str, store: ObjectStore, *, max_age_days: int,
                    tables: tuple[str, ...] = RETENTION_TABLES, now: datetime | None = None,
                    sample_rows: int = 50) -> list[RetentionDecision]:
    """Drop the verified days older than ``max_age_days`` (whole UTC days before
    ``cutoff_for(now, max_age_days)``) from ``tables``; tables that do not exist are skipped.

    Returns:
        one decision per chunk (TimescaleDB) or per day with rows (plain PostgreSQL), oldest
        first per table; kept ones carry the reason.

    Raises:
        ValueError: ``max_age_days`` < 1 (the current day is never dropped).
    """
    if max_age_days < 1:
        raise ValueError("max_age_days must be at least 1")
    cutoff = cutoff_for(now or datetime.now(UTC), max_age_days)
    decisions: list[RetentionDecision] = []
    for table in tables:
        with psycopg.connect(dsn) as conn:
            layout = table_layout(conn, table)
            if layout is None:
                continue
            hyper = _hypertable(conn, table)
        if hyper:
            decisions += _drop_chunks(dsn, store, table, cutoff, sample_rows)
        else:
            decisions += _delete_days(dsn, store, layout, cutoff, sample_rows)
    return decisions


def _drop_chunks(dsn: str, store: ObjectStore, table: str, cutoff: datetime,
                 sample_rows: int) -> list[RetentionDecision]:
    with psycopg.connect(dsn) as conn:
        chunks = conn.execute(
            "SELECT chunk_schema, chunk_name, range_start, range_end "
            "FROM timescaledb_information.chunks WHERE hypertable_name = %s AND range_end <= %s "
            "ORDER BY range_start", (table, cutoff)).fetchall()
    decisions = []
    for schema, name, start, end in chunks:
        days = tuple(_days(start, end))
        chunk = f"{quote_ident(schema)}.{quote_ident(name)}"
        expected, reasons = 0, []
        for day in days:
            rows, reason = _day_verdict(dsn, store, table, day, sample_rows)
            if rows is None:
                reasons.append(f"{day}: {reason}")
            else:
                expected += rows
        with psycopg.connect(dsn) as conn:
            # SHARE blocks inserts into this chunk until we commit; the count cannot move.
            conn.execute(f"LOCK TABLE {chunk} IN SHARE MODE")
            rows = conn.execute(f"SELECT count(*) FROM {chunk}").fetchone()[0]
            if not reasons and rows != expected:
                reasons.append(f"{rows} rows in the chunk, {expected} exported and verified")
            if reasons:
                decisions.append(RetentionDecision(table, days, rows, False, "; ".join(reasons)))
                continue
            conn.execute("SELECT drop_chunks(%s, older_than => %s, newer_than => %s)",
                         (table, end, start))
        decisions.append(RetentionDecision(table, days, rows, True))
    return decisions


def _old_days(dsn: str, layout: TableLayout, cutoff: datetime) -> list[tuple[date, int]]:
    """(day, rows) of every UTC day before ``cutoff`` that has rows, found by hopping from day
    to day along the index that leads with the time column (one probe per day with data)."""
    table, time_col = quote_ident(layout.table), quote_ident(layout.time_column)
    days = []
    with psycopg.connect(dsn) as conn:
        after = datetime.min.replace(tzinfo=UTC)
        while True:
            first = conn.execute(f"SELECT min({time_col}) FROM {table} WHERE {time_col} >= %s "
                                 f"AND {time_col} < %s", (after, cutoff)).fetchone()[0]
            if first is None:
                return days
            day = first.astimezone(UTC).date()
            rows = conn.execute(f"SELECT count(*) FROM {table} "
                                f"WHERE {day_filter(layout, day)}").fetchone()[0]
            days.append((day, rows))
            after = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def _delete_days(dsn: str, store: ObjectStore, layout: TableLayout, cutoff: datetime,
                 sample_rows: int) -> list[RetentionDecision]:
    decisions = []
    for day, rows in _old_days(dsn, layout, cutoff):
        expected, reason = _day_verdict(dsn, store, layout.table, day, sample_rows)
        if expected is None:
            decisions.append(RetentionDecision(layout.table, (day,), rows, False, reason))
            continue
        with psycopg.connect(dsn) as conn:
            deleted = conn.execute(f"DELETE FROM {quote_ident(layout.table)} "
                                   f"WHERE {day_filter(layout, day)}").rowcount
            if deleted != expected:
                conn.rollback()
                decisions.append(RetentionDecision(
                    layout.table, (day,), rows, False,
                    f"{deleted} rows to delete, {expected} exported and verified: rolled back"))
                continue
        decisions.append(RetentionDecision(layout.table, (day,), deleted, True))
    return decisions
