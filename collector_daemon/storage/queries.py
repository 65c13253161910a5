"""SQL of the collector outside the streaming writer: instrument upserts, the collector_status
heartbeat, the figures ``/metrics`` reads from the database, and the read queries behind
``tickvault status``.

The asyncpg functions expect a connection set up by ``writer.init_connection`` (timestamps as
µs-since-epoch integers).
"""

from __future__ import annotations

import datetime as dt

import json
import time

import asyncpg

from collector_daemon.rows import INSTRUMENTS

_INSTRUMENT_UPDATES = ", ".join(
    f"{c} = EXCLUDED.{c}" for c in INSTRUMENTS.columns if c not in INSTRUMENTS.natural_key)


async def upsert_instruments(conn: asyncpg.Connection, venue: str, rows: list[tuple]) -> int:
    """Insert or update ``instruments`` rows (``rows.INSTRUMENTS`` order); instruments of
    ``venue`` with a base currency and kind present in ``rows`` but absent from them are marked
    inactive (expired or delisted). Returns the number of rows upserted."""
    cols = ", ".join(INSTRUMENTS.columns)
    params = ", ".join(f"${i + 1}" for i in range(len(INSTRUMENTS.columns)))
    async with conn.transaction():
        await conn.executemany(
            f"INSERT INTO instruments ({cols}) VALUES ({params}) ON CONFLICT (venue, instrument_name) "
            f"DO UPDATE SET {_INSTRUMENT_UPDATES}, updated_at = now()", rows)
        # only instruments of the currencies and kinds listed: an ETH refresh leaves BTC alone
        await conn.execute(
            "UPDATE instruments SET is_active = false, updated_at = now() "
            "WHERE venue = $1 AND is_active AND base_currency = ANY($3::text[]) "
            "AND kind = ANY($4::text[]) AND NOT (instrument_name = ANY($2::text[]))",
            venue, [r[1] for r in rows], sorted({r[3] for r in rows if r[3]}),
            sorted({r[2] for r in rows}))
    return len(rows)


#: The streams of ``data_gaps.stream`` (schema/0001.core.sql, data_gaps_stream_check).
GAP_STREAMS: tuple[str, ...] = ("quotes", "trades")


async def open_gaps(conn: asyncpg.Connection, venue: str) -> dict[str, tuple[int, float]]:
    """Open ``data_gaps`` of ``venue`` per stream: ``{stream: (count, oldest detected_at in s
    since epoch)}``; streams without an open gap are absent (index ``data_gaps_open_idx``)."""
    rows = await conn.fetch(
        "SELECT stream, count(*), extract(epoch FROM min(detected_at))::float8 FROM data_gaps "
        "WHERE venue = $1 AND status = 'open' GROUP BY stream", venue)
    return {r[0]: (r[1], r[2]) for r in rows}


async def export_verified_days(conn: asyncpg.Connection, venue: str) -> dict[str, float]:
    """Per table, the start (UTC midnight, s since epoch) of the newest day whose nightly export
    of ``venue`` is verified (``export_manifest.verified_at`` set; orchestration/lib/export.py);
    tables never verified are absent."""
    rows = await conn.fetch(
        "SELECT table_name, extract(epoch FROM max(day))::float8 FROM export_manifest "
        "WHERE venue = $1 AND verified_at IS NOT NULL GROUP BY table_name", venue)
    return {r[0]: r[1] for r in rows}

async def heartbeat(conn: asyncpg.Connection, collector_id: str, venue: str, hostname: str,
                    pid: int, version: str, started_at_us: int, stats: dict,
                    stopped: bool = False) -> None:
    """Upsert this collector's ``collector_status`` row (heartbeat_at = now, µs UTC).

    ``stopped``: the last heartbeat of a clean shutdown (stopped_at = now); any other heartbeat
    clears stopped_at (the same collector_id running again)."""
    now_us = time.time_ns() // 1000
    await conn.execute(
        "INSERT INTO collector_status (collector_id, venue, hostname, pid, version, started_at, "
        "heartbeat_at, stats, stopped_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9) "
        "ON CONFLICT (collector_id) DO UPDATE SET venue = EXCLUDED.venue, hostname = EXCLUDED.hostname, "
        "pid = EXCLUDED.pid, version = EXCLUDED.version, started_at = EXCLUDED.started_at, "
        "heartbeat_at = EXCLUDED.heartbeat_at, stats = EXCLUDED.stats, stopped_at = EXCLUDED.stopped_at",
        collector_id, venue, hostname, pid, version, started_at_us, now_us,
        json.dumps(stats), now_us if stopped else None)


def _stream_tables(venues) -> list[tuple[str, str, str]]:
    """``(venue, stream, table)`` of every registered venue's streams."""
    return [(v.name, s.name, s.table.name) for v in venues for s in v.stream_specs()]


def status_streams(conn, venues) -> list[tuple]:
    """Per venue and stream for ``tickvault status`` (psycopg): ``(venue, stream, age of the
    newest row received, rows in the day of data up to the newest exchange timestamp, that
    newest exchange timestamp, open n, open duration, backfilled n, duration, unrecoverable n,
    duration)``; gaps by status with their total duration. Streams come from the venue registry
    (``venues``); only that last day of data is read (a replay's day of 2021 counts like
    today's)."""
    data: dict[tuple[str, str], tuple] = {}
    for venue, stream, table in _stream_tables(venues):
        row = conn.execute(
            f"SELECT now() - max(receive_ts), count(*), max(exchange_ts) "
            f"FROM {table}, (SELECT max(exchange_ts) AS newest FROM {table} WHERE venue = %(v)s) m "
            f"WHERE venue = %(v)s AND exchange_ts >= m.newest - interval '1 day'",
            {"v": venue}).fetchone()
        if row[1]:
            data[(venue, stream)] = row
    gaps = {(r[0], r[1]): r[2:] for r in conn.execute(
        "SELECT venue, stream, count(*) FILTER (WHERE status = 'open'), "
        "coalesce(sum(gap_end - gap_start) FILTER (WHERE status = 'open'), interval '0'), "
        "count(*) FILTER (WHERE status = 'backfilled'), "
        "coalesce(sum(gap_end - gap_start) FILTER (WHERE status = 'backfilled'), interval '0'), "
        "count(*) FILTER (WHERE status = 'unrecoverable'), "
        "coalesce(sum(gap_end - gap_start) FILTER (WHERE status = 'unrecoverable'), interval '0') "
        "FROM data_gaps GROUP BY venue, stream")}
    out = []
    for key in sorted(set(data) | set(gaps)):
        age, rows, newest = data.get(key, (None, 0, None))
        g = gaps.get(key, (0, None, 0, None, 0, None))
        out.append((*key, age, rows, newest, *g))
    return out


def status_instruments(conn, venues, hours: float) -> tuple[list[str], tuple | None, list[tuple]]:
    """Per-instrument rows and freshness for ``tickvault status`` (psycopg): the last ``hours``
    of data, counted back from the newest exchange timestamp stored. Returns the stream names
    (column order), the window ``(start, end)`` (end = the newest exchange timestamp stored;
    None without rows) and rows ``(venue, instrument_name, {stream: rows}, newest exchange_ts,
    age of the newest row received)``."""
    tables = _stream_tables(venues)
    newest = [conn.execute(f"SELECT max(exchange_ts) FROM {t}").fetchone()[0]
              for t in dict.fromkeys(t for _, _, t in tables)]
    newest = [n for n in newest if n is not None]
    streams = list(dict.fromkeys(s for _, s, _ in tables))
    if not newest:
        return streams, None, []
    since = max(newest)
    per: dict[tuple[str, str], list] = {}
    for venue, stream, table in tables:
        for name, n, last, age in conn.execute(
                f"SELECT instrument_name, count(*), max(exchange_ts), now() - max(receive_ts) "
                f"FROM {table} WHERE venue = %(v)s AND exchange_ts >= %(since)s - "
                f"make_interval(secs => %(hours)s * 3600) GROUP BY instrument_name",
                {"v": venue, "since": since, "hours": hours}).fetchall():
            entry = per.setdefault((venue, name), [{}, None, None])
            entry[0][stream] = n
            entry[1] = last if entry[1] is None else max(entry[1], last)
            entry[2] = age if entry[2] is None else min(entry[2], age)
    present = {v for v, _ in per}      # columns only for the venues with rows in the window
    streams = list(dict.fromkeys(s for v, s, _ in tables if v in present))
    since = since.astimezone(dt.timezone.utc)   # wall-clock arithmetic in a DST zone is off by 1 h
    window = (since - dt.timedelta(hours=hours), since)
    return streams, window, [(v, name, *e) for (v, name), e in sorted(per.items())]


STATUS_COLLECTORS_SQL = """
SELECT collector_id, venue, hostname, pid, started_at, now() - heartbeat_at AS heartbeat_age, stats,
       now() - stopped_at AS stopped_age
FROM collector_status ORDER BY heartbeat_at DESC
"""
