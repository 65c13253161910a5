"""SQL of the collector outside the streaming writer: instrument upserts, the collector_status
heartbeat, the figures ``/metrics`` reads from the database, and the read queries behind
``tickvault status``.

The asyncpg functions expect a connection set up by ``writer.init_connection`` (timestamps as
µs-since-epoch integers).
"""

from __future__ import annotations

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


#: Per-instrument rows and freshness for ``tickvault status`` (psycopg, %(hours)s parameter):
#: the last ``hours`` of data, counted back from the newest exchange timestamp stored (so a
#: replay of old captures shows too; the time index makes max() cheap).
STATUS_INSTRUMENTS_SQL = """
WITH bounds AS (
    SELECT greatest((SELECT max(exchange_ts) FROM quotes), (SELECT max(exchange_ts) FROM trades))
           - make_interval(secs => %(hours)s * 3600) AS since
), q AS (
    SELECT venue, instrument_name, count(*) AS quotes, max(exchange_ts) AS last_quote,
           max(receive_ts) AS last_quote_received
    FROM quotes, bounds WHERE exchange_ts >= bounds.since GROUP BY venue, instrument_name
), t AS (
    SELECT venue, instrument_name, count(*) AS trades, max(exchange_ts) AS last_trade
    FROM trades, bounds WHERE exchange_ts >= bounds.since GROUP BY venue, instrument_name
)
SELECT coalesce(q.venue, t.venue) AS venue, coalesce(q.instrument_name, t.instrument_name) AS instrument_name,
       coalesce(q.quotes, 0) AS quotes, coalesce(t.trades, 0) AS trades,
       greatest(q.last_quote, t.last_trade) AS last_exchange_ts,
       now() - q.last_quote_received AS received_age
FROM q FULL JOIN t ON q.venue = t.venue AND q.instrument_name = t.instrument_name
ORDER BY 1, 2
"""

#: Per venue and stream for ``tickvault status``: newest data, rows today (UTC), gaps by status
#: with their total duration.
STATUS_STREAMS_SQL = """
WITH s AS (
    SELECT venue, 'quotes' AS stream, max(receive_ts) AS last_received,
           count(*) FILTER (WHERE exchange_ts >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS rows_today
    FROM quotes WHERE exchange_ts >= (SELECT max(exchange_ts) FROM quotes) - interval '1 day' GROUP BY venue
    UNION ALL
    SELECT venue, 'trades', max(receive_ts),
           count(*) FILTER (WHERE exchange_ts >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
    FROM trades WHERE exchange_ts >= (SELECT max(exchange_ts) FROM trades) - interval '1 day' GROUP BY venue
), g AS (
    SELECT venue, stream,
           count(*) FILTER (WHERE status = 'open') AS open_n,
           coalesce(sum(gap_end - gap_start) FILTER (WHERE status = 'open'), interval '0') AS open_d,
           count(*) FILTER (WHERE status = 'backfilled') AS backfilled_n,
           coalesce(sum(gap_end - gap_start) FILTER (WHERE status = 'backfilled'), interval '0') AS backfilled_d,
           count(*) FILTER (WHERE status = 'unrecoverable') AS unrecoverable_n,
           coalesce(sum(gap_end - gap_start) FILTER (WHERE status = 'unrecoverable'), interval '0') AS unrecoverable_d
    FROM data_gaps GROUP BY venue, stream
)
SELECT coalesce(s.venue, g.venue), coalesce(s.stream, g.stream), now() - s.last_received,
       coalesce(s.rows_today, 0), coalesce(g.open_n, 0), g.open_d, coalesce(g.backfilled_n, 0),
       g.backfilled_d, coalesce(g.unrecoverable_n, 0), g.unrecoverable_d
FROM s FULL JOIN g ON s.venue = g.venue AND s.stream = g.stream
ORDER BY 1, 2
"""

STATUS_COLLECTORS_SQL = """
SELECT collector_id, venue, hostname, pid, started_at, now() - heartbeat_at AS heartbeat_age, stats,
       now() - stopped_at AS stopped_age
FROM collector_status ORDER BY heartbeat_at DESC
"""
