"""``tickvault status`` on a database a real replay filled: what it prints equals the tables."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import psycopg
import pytest

from replay_helpers import replay

pytestmark = pytest.mark.realdata


def test_status_shows_collectors_streams_gaps_and_instruments(migrated_db_url, tmp_path, real_data_dir):
    summary, _ = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'America/New_York'")   # output is UTC whatever the session's zone
        conn.execute(
            "INSERT INTO data_gaps (venue, stream, gap_start, gap_end, detected_by, status) VALUES "
            "('deribit', 'quotes', '2021-04-05 17:48:00Z', '2021-04-05 17:48:12.5Z', 'test', 'unrecoverable'), "
            "('deribit', 'quotes', '2021-04-05 17:49:00Z', '2021-04-05 17:49:02Z', 'test', 'unrecoverable'), "
            "('deribit', 'trades', '2021-04-05 17:48:00Z', '2021-04-05 17:48:30Z', 'test', 'open')")
        per_instrument = dict(conn.execute(
            "SELECT instrument_name, count(*) FROM quotes GROUP BY 1").fetchall())
        started = conn.execute("SELECT started_at AT TIME ZONE 'UTC' FROM collector_status").fetchone()[0]
    env = dict(os.environ, TICKVAULT_DATABASE_URL=migrated_db_url, PGTZ="America/New_York")
    out = subprocess.run([sys.executable, "-m", "collector_daemon.cli", "status", "--hours", "100000"],
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()

    collector = next(line for line in lines if "heartbeat" in line)
    assert f"started {started:%Y-%m-%d %H:%M:%S}Z" in collector
    assert f"messages {summary.messages}" in collector and "rejected 0" in collector

    quotes = next(line for line in lines if re.match(r"\s+deribit\s+quotes\s", line))
    assert re.search(r"\d+ s ago\s+0\s+0\s+0\s+2 / 14\.5 s$", quotes), quotes   # no quotes "today"
    trades = next(line for line in lines if re.match(r"\s+deribit\s+trades\s", line))
    assert re.search(r"1 / 30\.0 s\s+0\s+0$", trades), trades

    shown = {m[1]: int(m[2]) for line in lines
             if (m := re.match(r"\s+deribit\s+(ETH-\S+)\s+(\d+)\s+0\s", line))}
    assert shown == per_instrument and sum(shown.values()) == 197
