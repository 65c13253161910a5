"""``tickvault status`` on a database a real replay filled: what it prints equals the tables."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys

import psycopg
import pytest

from replay_helpers import replay


@pytest.mark.realdata
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
        newest = conn.execute("SELECT max(exchange_ts) AT TIME ZONE 'UTC' FROM quotes").fetchone()[0]
        started, stopped_after_s = conn.execute(
            "SELECT started_at AT TIME ZONE 'UTC', extract(epoch FROM stopped_at - heartbeat_at) "
            "FROM collector_status").fetchone()
        # a collector that died 10 minutes ago: its heartbeat stopped, no clean shutdown recorded
        conn.execute(
            "INSERT INTO collector_status (collector_id, venue, hostname, pid, version, started_at, "
            "heartbeat_at) VALUES ('dead-1', 'deribit', 'h', 1, 'x', now() - interval '1 hour', "
            "now() - interval '600 s')")
    env = dict(os.environ, TICKVAULT_DATABASE_URL=migrated_db_url, PGTZ="America/New_York")
    out = subprocess.run([sys.executable, "-m", "collector_daemon.cli", "status", "--hours", "100000"],
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()

    # the replay's collector shut down cleanly: its last heartbeat recorded stopped_at
    assert stopped_after_s == 0
    collector = next(line for line in lines if "(clean shutdown)" in line)
    assert re.search(r" \(deribit\) stopped \d+ s ago \(clean shutdown\), ", collector), collector
    assert f"started {started:%Y-%m-%d %H:%M:%S}Z" in collector
    dead = next(line for line in lines if line.startswith("  dead-1 "))
    assert re.search(r"heartbeat 60\d s ago \(no clean shutdown recorded: died, or cut off from the "
                     r"database\), started ", dead), dead
    assert f"messages {summary.messages}" in collector and "rejected 0" in collector

    # headings say what is shown: the stream's rows are its last day of data (a replay of 2021:
    # all 197 quotes, not "0 today"), the instrument table names its window in exchange time
    assert "today" not in out and "last 24 h" not in out
    quotes = next(line for line in lines if re.match(r"\s+deribit\s+quotes\s", line))
    assert re.search(rf"\d+ s ago\s+{newest:%Y-%m-%d %H:%M:%S}\s+197\s+0\s+0\s+2 / 14\.5 s$",
                     quotes), quotes
    window = f"rows from {newest - dt.timedelta(hours=100000):%Y-%m-%d %H:%M:%S} to {newest:%Y-%m-%d %H:%M:%S} UTC"
    assert any(line.startswith(f"instruments, {window} (exchange time: the last 100000 h of data")
               for line in lines), out
    trades = next(line for line in lines if re.match(r"\s+deribit\s+trades\s", line))
    assert re.search(r"1 / 30\.0 s\s+0\s+0$", trades), trades

    shown = {m[1]: int(m[2]) for line in lines
             if (m := re.match(r"\s+deribit\s+(ETH-\S+)\s+(\d+)\s+0\s", line))}
    assert shown == per_instrument and sum(shown.values()) == 197


def test_status_on_a_database_without_the_schema_says_to_migrate(db_url):
    env = dict(os.environ, TICKVAULT_DATABASE_URL=db_url)
    done = subprocess.run([sys.executable, "-m", "collector_daemon.cli", "status"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ('tickvault status: the database schema is missing or older than '
                                   'this version (relation "collector_status" does not exist): run '
                                   '`tickvault migrate`')
