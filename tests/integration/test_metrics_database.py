"""What ``/metrics`` reports from the database (open gaps, export freshness) and from the spool's
filesystem, read from a real migrated database by ``refresh_database_facts`` and scraped over
HTTP from ``MetricsServer``."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector_daemon.metrics import MetricsServer, Stats, refresh_database_facts
from collector_daemon.storage.writer import BatchWriter


def _insert_gap(conn: psycopg.Connection, venue: str, stream: str, status: str, detected_at: datetime) -> None:
    conn.execute(
        "INSERT INTO data_gaps (venue, stream, gap_start, gap_end, detected_by, status, detected_at) "
        "VALUES (%s, %s, %s, %s, 'collector', %s, %s)",
        (venue, stream, detected_at - timedelta(minutes=5), detected_at - timedelta(minutes=4), status,
         detected_at))


def _insert_export(conn: psycopg.Connection, venue: str, table: str, day: str, verified: bool) -> None:
    conn.execute(
        "INSERT INTO export_manifest (venue, table_name, day, export_id, schema_version, source_rows, "
        "rows, bytes, object_keys, object_bytes, object_sha256, object_etags, manifest_key, storage_url, "
        "exported_at, verified_at) VALUES (%s, %s, %s, 'x', 1, 1, 1, 1, '{k}', '{1}', '{s}', '{e}', 'm', "
        "'file:///x', now(), CASE WHEN %s THEN now() END)", (venue, table, day, verified))


def _scrape(stats: Stats) -> dict[tuple[str, tuple], float]:
    server = MetricsServer(stats, lambda: (True, {}), port=0)
    server.start()
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    finally:
        server.stop()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_open_gaps_and_export_freshness_from_the_database(migrated_db_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    oldest = now - timedelta(hours=2)
    with psycopg.connect(migrated_db_url) as conn:
        _insert_gap(conn, "deribit", "trades", "open", oldest)
        _insert_gap(conn, "deribit", "trades", "open", now - timedelta(minutes=10))
        _insert_gap(conn, "deribit", "trades", "backfilled", now - timedelta(days=3))  # resolved: not open
        _insert_gap(conn, "deribit", "quotes", "unrecoverable", now - timedelta(days=3))
        _insert_gap(conn, "bybit", "quotes", "open", now - timedelta(days=9))        # another venue
        _insert_export(conn, "deribit", "quotes", "2026-12-02", verified=True)
        _insert_export(conn, "deribit", "quotes", "2026-12-03", verified=True)
        _insert_export(conn, "deribit", "quotes", "2026-12-04", verified=False)       # not verified yet
        _insert_export(conn, "deribit", "trades", "2026-12-01", verified=True)
        _insert_export(conn, "bybit", "trades", "2026-12-04", verified=True)

    stats = Stats(venue="deribit", spool_dir=tmp_path)
    before = _scrape(stats)   # nothing read from the database yet: no such series at all
    assert not any(name.startswith(("tickvault_open_gap", "tickvault_export")) for name, _ in before)

    async def refresh() -> None:  # on the writer's pool, as the collector's heartbeat does
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        try:
            async with writer.pool.acquire() as conn:
                await refresh_database_facts(stats, conn)
        finally:
            await writer.close()

    asyncio.run(refresh())
    assert stats.open_gaps == {"trades": (2, pytest.approx(oldest.timestamp(), abs=1e-3))}
    day = lambda d: datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp()  # noqa: E731
    assert stats.export_verified_days == {"quotes": day("2026-12-03"), "trades": day("2026-12-01")}

    m = _scrape(stats)
    v = (("venue", "deribit"),)
    assert m[("tickvault_open_gaps", (("stream", "trades"), *v))] == 2
    assert m[("tickvault_open_gaps", (("stream", "quotes"), *v))] == 0
    age = m[("tickvault_open_gap_oldest_age_seconds", (("stream", "trades"), *v))]
    assert 7200 <= age <= 7200 + (time.time() - now.timestamp()) + 1
    assert m[("tickvault_open_gap_oldest_age_seconds", (("stream", "quotes"), *v))] == 0
    assert m[("tickvault_export_verified_day_timestamp_seconds", (("table", "quotes"), *v))] == day("2026-12-03")
    assert m[("tickvault_export_verified_day_timestamp_seconds", (("table", "trades"), *v))] == day("2026-12-01")
    fs = os.statvfs(tmp_path)
    assert m[("tickvault_spool_filesystem_size_bytes", v)] == fs.f_blocks * fs.f_frsize
    # free space moves with other processes' writes: within 1 GiB of a statvfs a moment later
    assert abs(m[("tickvault_spool_filesystem_avail_bytes", v)] - fs.f_bavail * fs.f_frsize) < 2**30
