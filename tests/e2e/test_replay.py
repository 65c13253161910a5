"""End to end on real captures: emulator (real WebSocket on loopback) -> collector -> TimescaleDB.

Every test compares what landed with what the emulator says it sent and with the capture's
own frames, value by value.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector_daemon.emulator.replay import Faults
from replay_helpers import (
    CAPTURE, TRADES_CSV, assert_quote_equals_frame, capture_tickers, db_quotes, replay,
)

pytestmark = pytest.mark.realdata

def test_replay_lands_every_ticker_exactly_once_with_exact_values(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    expected = capture_tickers(real_data_dir / CAPTURE, "ETH")
    stored = db_quotes(migrated_db_url)
    assert len(expected) == 197 and set(stored) == set(expected)
    for key, data in expected.items():
        assert_quote_equals_frame(stored[key], data)
    sent = stats["totals"]["frames_by_instrument"]["ticker"]
    assert sum(sent.values()) == summary.rows_received["quotes"] == summary.rows_written["quotes"] == 197
    with psycopg.connect(migrated_db_url) as conn:
        events = conn.execute("SELECT event, reason FROM connection_events ORDER BY event_id").fetchall()
        receive_lag = conn.execute("SELECT max(now() - receive_ts) FROM quotes").fetchone()[0]
        status = conn.execute("SELECT stats->>'messages' FROM collector_status").fetchone()[0]
    assert events == [("connect", None), ("subscribed", None), ("disconnect", "replay finished")]
    assert receive_lag.total_seconds() < 120
    assert status == "197"

    # the same capture again: nothing new
    summary2, _ = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    assert summary2.rows_written["quotes"] == 0 and summary2.rows_duplicate["quotes"] == 197
    assert len(db_quotes(migrated_db_url)) == 197


def test_replay_with_trade_source_stores_every_trade_once(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir,
                                        trades=real_data_dir / TRADES_CSV, currency="BTC"))
    with gzip.open(real_data_dir / TRADES_CSV, "rt") as fh:
        source = {r["id"]: r for r in csv.DictReader(fh) if r["instrument_name"].endswith(("-C", "-P"))}
    assert len(source) == 277 and stats["totals"]["trades_sent"] == 277
    with psycopg.connect(migrated_db_url) as conn:
        rows = conn.execute(
            "SELECT trade_id, instrument_name, price, amount, direction, "
            "(extract(epoch FROM exchange_ts) * 1000)::bigint, index_price, mark_price, iv, trade_seq, source "
            "FROM trades").fetchall()
    assert len(rows) == 277 and {r[0] for r in rows} == set(source)
    for tid, name, price, amount, direction, ts, index_price, mark_price, iv, seq, src in rows:
        s = source[tid]
        assert (name, direction, src) == (s["instrument_name"], s["direction"], "ws")
        assert (price, amount, index_price, mark_price) == (
            float(s["price"]), float(s["amount"]), float(s["index_price"]), float(s["mark_price"]))
        assert ts == int(s["timestamp"])
        assert iv == (float(s["implied_volatility"]) if s["implied_volatility"] else None)
        assert seq is not None   # the emulator derives trade_seq (Deribit always sends it)
    assert summary.rows_written["quotes"] == len(capture_tickers(real_data_dir / CAPTURE, "BTC"))


def test_malformed_frames_are_kept_and_valid_data_is_complete(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir,
                                        faults=Faults(seed=7, malformed=1000)))
    assert stats["totals"]["malformed_sent"] == 1000
    assert summary.rejected == 1000
    with psycopg.connect(migrated_db_url) as conn:
        n, kinds, biggest = conn.execute(
            "SELECT count(*), count(DISTINCT split_part(reason, ':', 1)), max(raw_bytes) "
            "FROM rejected_messages").fetchone()
    assert n == 1000 and kinds >= 4 and biggest >= 1_000_000
    assert set(db_quotes(migrated_db_url)) == set(capture_tickers(real_data_dir / CAPTURE, "ETH"))


def test_dropped_connections_reconnect_and_record_lost_windows(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir,
                                        faults=Faults(seed=3, drop_every=50), speed=20))
    drops = stats["totals"]["drops"]
    assert drops >= 3 and summary.reconnects == drops
    with psycopg.connect(migrated_db_url) as conn:
        disconnects = conn.execute(
            "SELECT count(*) FROM connection_events WHERE event = 'disconnect' "
            "AND reason <> 'replay finished'").fetchone()[0]
        windows = conn.execute(
            "SELECT window_start, window_end FROM connection_events WHERE event = 'subscribed' "
            "AND window_start IS NOT NULL ORDER BY event_id").fetchall()
        connects = conn.execute("SELECT count(*) FROM connection_events WHERE event = 'connect'").fetchone()[0]
    assert disconnects == drops and connects == drops + 1
    assert len(windows) == drops and all(start < end for start, end in windows)
    # every ticker the emulator delivered is stored; what it sent while we were away is not
    sent = stats["totals"]["frames_by_instrument"]["ticker"]
    assert summary.rows_written["quotes"] == sum(sent.values())


def rows_received(metrics_url: str, table: str) -> int:
    """The collector's ``tickvault_rows_received`` counter of ``table`` (0 before the first row)."""
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            if sample.name == "tickvault_rows_received_total" and sample.labels["table"] == table:
                return int(sample.value)
    return 0


def wait_rows_received(proc: subprocess.Popen, log: Path, table: str, timeout_s: float) -> int:
    """Wait until the collector (its ``/metrics`` URL read from its log) has received rows of
    ``table``; returns how many. Fails when the collector exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    metrics_url = None
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {table} received in {timeout_s} s: " \
            + log.read_text()[-3000:]
        if metrics_url is None:
            found = re.search(r"metrics on (http://\S+/metrics)", log.read_text())
            metrics_url = found.group(1) if found else None
        if metrics_url is not None and (received := rows_received(metrics_url, table)):
            return received
        time.sleep(0.05)


def test_sigterm_mid_replay_loses_nothing_received(migrated_db_url, tmp_path, real_data_dir):
    env = {**os.environ, "TICKVAULT_DATABASE_URL": migrated_db_url, "TICKVAULT_METRICS_PORT": "0",
           "TICKVAULT_SPOOL_DIR": str(tmp_path / "spool"), "TICKVAULT_FLUSH_INTERVAL_S": "5"}
    log = tmp_path / "collector.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector_daemon.cli", "collect", "--replay", str(real_data_dir / CAPTURE),
             "--top-n", "all", "--speed", "10"], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        # mid-replay (the capture lasts ~12 s at 10x): quotes received, sitting in a 5 s flush buffer
        wait_rows_received(proc, log, "quotes", timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    line = next(l for l in out.splitlines() if l.strip().startswith("quotes:"))
    written, received = int(line.split()[1]), int(line.split()[5])
    with psycopg.connect(migrated_db_url) as conn:
        stored = conn.execute("SELECT count(*) FROM quotes").fetchone()[0]
    assert 0 < received < 197, out       # really mid-replay
    assert stored == written == received, out


def test_replay_into_plain_postgresql(migrated_plain_db_url, tmp_path, real_data_dir):
    summary, _ = asyncio.run(replay(migrated_plain_db_url, tmp_path, real_data_dir))
    expected = capture_tickers(real_data_dir / CAPTURE, "ETH")
    stored = db_quotes(migrated_plain_db_url)
    assert summary.rows_written["quotes"] == len(stored) == len(expected) == 197
    for key, data in expected.items():
        assert_quote_equals_frame(stored[key], data)


def test_running_collector_follows_universe_changes_without_restart(migrated_db_url, tmp_path, real_data_dir):
    """A new universe_versions row (what the Dagster instrument_universe asset writes) reaches the
    running collector by NOTIFY: it unsubscribes the dropped instruments at once."""
    import psycopg as pg

    from collector_daemon.daemon import Collector
    from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
    from replay_helpers import settings_for

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, speed=4, close_when_done=True))
        await server.start(host="127.0.0.1", port=0)
        collector = Collector(settings_for(migrated_db_url, tmp_path), ws_url=server.ws_url,
                              rest_url=server.rest_url, stop_on_replay_end=True)
        run = asyncio.create_task(collector.run())
        while not collector.connections or len(collector.connections[0].subscribed) < 8:
            await asyncio.sleep(0.1)
        full = list(collector.selected)
        keep = full[:4]
        with pg.connect(migrated_db_url, autocommit=True) as conn:
            # the whole chain is now these 4 (top_n NULL = all, what this collector asks for)
            conn.execute("INSERT INTO universe_versions (venue, currency, top_n, instruments, subscribed, kinds) "
                         "VALUES ('deribit', 'ETH', NULL, 4, %s, '{option}')", (keep,))
        for _ in range(50):
            if collector.selected == keep:
                break
            await asyncio.sleep(0.1)
        subscribed = set(collector.connections[0].subscribed)
        collector.request_stop()
        await run
        await server.stop()
        return full, keep, subscribed

    full, keep, subscribed = asyncio.run(scenario())
    assert len(full) == 7
    assert subscribed == {"trades.option.ETH.100ms"} | {f"ticker.{n}.100ms" for n in keep}
    with psycopg.connect(migrated_db_url) as conn:
        gone = conn.execute("SELECT channels FROM connection_events WHERE event = 'unsubscribed'").fetchone()[0]
    assert set(gone) == {f"ticker.{n}.100ms" for n in full[4:]}


def test_watchdog_leaves_a_flowing_connection_alone(migrated_db_url, tmp_path, real_data_dir):
    """Tickers arrive every ~60 ms (10x): a 2 s 'no quotes' reconnect limit must never fire."""
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir, speed=10,
                                        quotes_stale_warn_s=1.0, quotes_stale_reconnect_s=2.0))
    assert summary.reconnects == 0 and stats["totals"]["drops"] == 0
    assert summary.rows_written["quotes"] == 197
