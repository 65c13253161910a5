"""``tickvault collect --workers 2`` against the emulator over loopback (real processes, real
signals, real TimescaleDB): two collector processes over disjoint halves of the universe under
one supervisor, one status, one /metrics; a killed worker is restarted and its window recorded
in data_gaps; SIGTERM stops them all, losing nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import psutil
import psycopg
import pytest

from faults.conftest import collector_env, emulator_process, free_port, tickvault
from e2e.test_mainjob import STOP_LIMIT_S, stop_timed, wait_log

pytestmark = [pytest.mark.realdata, pytest.mark.timeout(120)]


def _env(dsn, tmp_path, endpoints, metrics_port):
    return collector_env(dsn, tmp_path, TICKVAULT_WORKERS="2", TICKVAULT_COLLECTOR_ID="daemon-a",
                         TICKVAULT_METRICS_PORT=str(metrics_port), TICKVAULT_STATUS_INTERVAL_S="0.5",
                         TICKVAULT_FLUSH_INTERVAL_S="0.2", **endpoints)


def _metrics(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of the supervisor's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {m[1]: float(m[2]) for m in re.finditer(r"^([^#\s]\S*) (\S+)$", text, re.M)}


def _status_rows(dsn: str) -> dict[str, tuple]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT collector_id, pid, stats, stopped_at, (extract(epoch FROM started_at) * 1e6)::bigint "
            "FROM collector_status")}


def _worker_pids(proc: subprocess.Popen) -> list[int]:
    return [c.pid for c in psutil.Process(proc.pid).children() if "--worker" in c.cmdline()]


def _wait(what, check, proc, log, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return value


def test_two_workers_store_every_row_once_under_one_status_and_metrics(migrated_db_url, tmp_path,
                                                                         real_data_dir):
    log = tmp_path / "collector.log"
    port = free_port()
    with emulator_process(tmp_path, real_data_dir, "--speed", "20", "--loop", "2", "--fanout", "20",
                          "--wait-for-clients", "2") as (stats_url, endpoints):
        proc = tickvault("collect", env=_env(migrated_db_url, tmp_path, endpoints, port), log=log)
        try:
            wait_log(log, r"worker1 .*subscribing \d+ instruments", proc)
            wait_log(log, r"worker2 .*subscribing \d+ instruments", proc)
            _wait("replay finished", lambda: httpx.get(stats_url).json()["replay"]["state"] == "finished",
                  proc, log)
            stats = httpx.get(stats_url).json()
            sent = sum(stats["totals"]["frames_by_instrument"]["ticker"].values())

            def stored():
                with psycopg.connect(migrated_db_url) as conn:
                    return conn.execute("SELECT count(*) FROM quotes").fetchone()[0] >= sent
            _wait("every quote stored", stored, proc, log)
            time.sleep(1.5)       # a heartbeat and a metrics refresh after the last commit
            metrics = _metrics(port)
            rows = _status_rows(migrated_db_url)
            status = subprocess.run([sys.executable, "-m", "collector_daemon.cli", "status"],
                                    env=_env(migrated_db_url, tmp_path, endpoints, port),
                                    capture_output=True, text=True, timeout=60)
            workers = _worker_pids(proc)
            code, elapsed = stop_timed(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    # each worker subscribed its own half: chain-wide trades in worker 1 only
    subs = [set(c["subscriptions"]) for c in stats["clients"]]
    assert len(subs) == 2 and not subs[0] & subs[1]
    assert sum(any(ch.startswith("trades.") for ch in s) for s in subs) == 1
    with psycopg.connect(migrated_db_url) as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT (instrument_name, exchange_ts)) "
                                   "FROM quotes").fetchone()
    assert n == distinct == sent > 0                                   # every row exactly once
    # one status: a row per worker, each with its part of the rows
    assert set(rows) == {"daemon-a/worker1", "daemon-a/worker2"}
    written = {cid: r[1]["rows_written"].get("quotes", 0) for cid, r in rows.items()}
    assert all(written.values()) and sum(written.values()) == sent, written
    assert status.returncode == 0 and "daemon-a/worker1 (deribit)" in status.stdout
    assert "daemon-a/worker2 (deribit)" in status.stdout
    # one /metrics: the workers' counters summed
    assert metrics['tickvault_rows_written_total{table="quotes",venue="deribit"}'] == sent
    assert metrics['tickvault_workers{venue="deribit"}'] == 2
    assert metrics['tickvault_workers_running{venue="deribit"}'] == 2
    assert metrics['tickvault_connected{venue="deribit"}'] == 2
    assert metrics['tickvault_worker_restarts_total{venue="deribit"}'] == 0
    # SIGTERM: every worker stops cleanly, in time
    assert code == 0 and elapsed < STOP_LIMIT_S, (code, elapsed, text[-3000:])
    assert len(workers) == 2 and not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                         for p in workers)
    assert "killing it" not in text
    assert all(r[2] is not None for r in _status_rows(migrated_db_url).values())   # stopped_at


def test_a_killed_worker_is_restarted_and_its_gap_recorded(migrated_db_url, tmp_path, real_data_dir):
    log = tmp_path / "collector.log"
    port = free_port()
    with emulator_process(tmp_path, real_data_dir, "--speed", "4", "--loop", "6", "--fanout", "20",
                          "--wait-for-clients", "2") as (stats_url, endpoints):
        proc = tickvault("collect", env=_env(migrated_db_url, tmp_path, endpoints, port), log=log)
        try:
            def committed():
                row = _status_rows(migrated_db_url).get("daemon-a/worker2")
                return row is not None and row[1].get("committed_exchange_us", 0) > 0 and row
            before = _wait("worker 2 committed rows", committed, proc, log)
            victim = before[0]
            psutil.Process(victim).kill()                                # SIGKILL
            time.sleep(0.05)
            start_us = _status_rows(migrated_db_url)["daemon-a/worker2"][1]["committed_exchange_us"]
            wait_log(log, r"worker2 \(daemon-a/worker2\) exited with code -9", proc)

            def gap():
                with psycopg.connect(migrated_db_url) as conn:
                    return conn.execute(
                        "SELECT stream, instrument_name, status, reason, "
                        "(extract(epoch FROM gap_start) * 1e6)::bigint, "
                        "(extract(epoch FROM gap_end) * 1e6)::bigint FROM data_gaps "
                        "WHERE detected_by = 'worker_exit'").fetchall()
            gaps = _wait("the crash gap", gap, proc, log)
            after = _status_rows(migrated_db_url)["daemon-a/worker2"]
            metrics = _metrics(port)
            code, elapsed = stop_timed(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert after[0] != victim and after[3] > before[3]                  # a new process, restarted
    assert after[1]["rows_written"].get("quotes", 0) > 0                # and collecting again
    assert metrics['tickvault_worker_restarts_total{venue="deribit"}'] == 1
    assert len(gaps) == 1, gaps                                         # quotes only: no trades in worker 2
    stream, instrument, status, reason, gap_start, gap_end = gaps[0]
    assert (stream, instrument, status) == ("quotes", "*", "unrecoverable")
    assert "daemon-a/worker2 (shard 2/2, its instruments only) exited with code -9" in reason
    assert gap_start == start_us and gap_end > gap_start
    with psycopg.connect(migrated_db_url) as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT (instrument_name, exchange_ts)) "
                                   "FROM quotes").fetchone()
    assert n == distinct > 0
    assert code == 0 and elapsed < STOP_LIMIT_S, (code, elapsed, text[-3000:])
