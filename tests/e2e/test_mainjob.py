"""The main job stops within 5 s whatever it waits for, losing nothing (issue 13).

Real processes and real signals: ``tickvault collect`` against the emulator (its own process) or
against nothing at all (a refused port, a name that does not resolve, a database that is not
there), and ``tickvault run --replay`` with the Dagster gRPC server, webserver and daemon.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from faults.conftest import collector_env, emulator_process, free_port, own_pg, tickvault  # noqa: F401 (own_pg: a fixture)
from replay_helpers import CAPTURE

STOP_LIMIT_S = 5.0
REPO = Path(__file__).resolve().parents[2]


def wait_log(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 60,
             count: int = 1) -> str:
    """Wait until ``pattern`` (regex) occurs ``count`` times in ``log``; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if len(re.findall(pattern, text)) >= count:
            return text
        assert proc.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{text[-3000:]}"
        time.sleep(0.1)


def stop_timed(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, float]:
    """Send ``sig``; returns (exit code, seconds until the process ended)."""
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return code, time.monotonic() - started


@pytest.mark.realdata
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_during_reconnect_backoff(sig, migrated_db_url, tmp_path, real_data_dir):
    """The WebSocket endpoint refuses; a 30-60 s back-off is running: a signal ends it at once."""
    log = tmp_path / "collector.log"
    with emulator_process(tmp_path, real_data_dir) as (_, endpoints):
        endpoints["TICKVAULT_DERIBIT_WS_URL"] = f"ws://127.0.0.1:{free_port()}/ws/api/v2"
        proc = tickvault("collect", log=log, env=collector_env(
            migrated_db_url, tmp_path, TICKVAULT_BACKOFF_MIN_S="30", TICKVAULT_BACKOFF_MAX_S="60",
            **endpoints))
        try:
            text = wait_log(log, r"reconnecting in (3\d|[45]\d|60)\.\d s", proc)
            code, elapsed = stop_timed(proc, sig)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0 and elapsed < STOP_LIMIT_S, (code, elapsed, log.read_text()[-2000:])
    assert "disconnected (ConnectionRefusedError" in text
    with psycopg.connect(migrated_db_url) as conn:   # the stop is recorded, cleanly
        reasons = [r for r, in conn.execute("SELECT reason FROM connection_events "
                                            "WHERE event = 'disconnect' ORDER BY event_ts")]
        stopped = conn.execute("SELECT stopped_at IS NOT NULL FROM collector_status").fetchone()[0]
    assert reasons[-1] == "shutdown" and stopped


@pytest.mark.realdata
@pytest.mark.parametrize("where,cause", [
    ("ws://exchange.invalid/ws/api/v2", "name resolution failed"),
    ("ws://127.0.0.1:{port}/ws/api/v2", "connection refused"),
], ids=["dns", "refused"])
def test_unreachable_exchange_is_reported_once(where, cause, migrated_db_url, tmp_path, real_data_dir):
    """After 3 failed connects the log says plainly, once, that the exchange cannot be reached
    and points to the replay; the reconnects go on (capped back-off)."""
    log = tmp_path / "collector.log"
    with emulator_process(tmp_path, real_data_dir) as (_, endpoints):
        endpoints["TICKVAULT_DERIBIT_WS_URL"] = where.format(port=free_port())
        proc = tickvault("collect", log=log, env=collector_env(
            migrated_db_url, tmp_path, TICKVAULT_BACKOFF_MIN_S="0.05", TICKVAULT_BACKOFF_MAX_S="0.2",
            **endpoints))
        try:
            text = wait_log(log, r"reconnecting in", proc, count=10)
            code, elapsed = stop_timed(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    reports = [line for line in text.splitlines() if "cannot reach the exchange" in line]
    assert len(reports) == 1, reports
    assert f"after 3 attempts: {cause}" in reports[0]
    assert "Still retrying (back-off capped at 0.2 s)" in reports[0]
    assert reports[0].endswith("replay a capture instead: scripts/run --replay CAPTURE")
    assert code == 0 and elapsed < STOP_LIMIT_S, (code, elapsed)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_while_the_database_is_unreachable_at_start(sig, tmp_path):
    """No server on the database port: the collector says it waits for the database, and a
    signal ends the wait (it used to be ignored until SIGKILL)."""
    log = tmp_path / "collector.log"
    dsn = f"postgresql://tickvault@127.0.0.1:{free_port()}/tickvault"
    proc = tickvault("collect", log=log, env=collector_env(dsn, tmp_path))
    try:
        text = wait_log(log, r"database unavailable \(.*\); waiting \d+\.\d s before retrying", proc,
                        count=2)
        code, elapsed = stop_timed(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"connecting to the database at 127.0.0.1:{dsn.split(':')[2]}" in text
    assert code == 0 and elapsed < STOP_LIMIT_S, (code, elapsed, log.read_text()[-2000:])
    assert "stopped while waiting for the database" in log.read_text()


@pytest.mark.realdata
def test_stop_during_a_database_outage_spools_and_loses_nothing(own_pg, tmp_path, real_data_dir):
    """The database goes away mid-run; batches go to the spool; SIGTERM: the collector is gone
    within 5 s (it used to take 10.2 s); the next run drains the spool and every quote the
    emulator sent is stored exactly once."""
    server, dsn = own_pg
    log1, log2 = tmp_path / "collector1.log", tmp_path / "collector2.log"
    with emulator_process(tmp_path, real_data_dir, "--speed", "20", "--loop", "2", "--fanout", "20") \
            as (stats_url, endpoints):
        env = collector_env(dsn, tmp_path, TICKVAULT_FLUSH_INTERVAL_S="0.5", **endpoints)
        first = tickvault("collect", env=env, log=log1)
        second = None
        try:
            wait_log(log1, r"subscribing \d+ instruments", first)
            time.sleep(1.5)
            server.stop()
            wait_log(log1, r"spooling batches", first)
            time.sleep(1)
            code, elapsed = stop_timed(first)
            assert code == 0 and elapsed < STOP_LIMIT_S, (code, elapsed, log1.read_text()[-3000:])
            spooled = list((tmp_path / "spool").rglob("segment-*.spool"))
            assert spooled, "nothing in the spool"
            server.start()
            second = tickvault("collect", env=env, log=log2)   # drains the spool, collects on
            deadline = time.monotonic() + 120
            while httpx.get(stats_url).json()["replay"]["state"] != "finished":
                assert time.monotonic() < deadline and second.poll() is None, log2.read_text()[-3000:]
                time.sleep(0.5)
            time.sleep(2)
            assert stop_timed(second)[0] == 0
            stats = httpx.get(stats_url).json()
        finally:
            for p in (second, first):
                if p is not None and p.poll() is None:
                    p.kill()
    assert "left by an earlier run" in log2.read_text()
    assert not list((tmp_path / "spool").rglob("segment-*.spool"))      # drained
    sent = sum(stats["totals"]["frames_by_instrument"]["ticker"].values())
    with psycopg.connect(dsn) as conn:
        stored, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (instrument_name, exchange_ts)) FROM quotes").fetchone()
    assert stored == distinct == sent > 0


def _gql(url: str, query: str) -> dict:
    r = httpx.post(url, json={"query": query}, timeout=30)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


ASSETS = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"


@pytest.mark.realdata
@pytest.mark.timeout(400)
def test_run_replay_brings_up_the_platform_and_ctrl_c_stops_it_all(db_url, tmp_path, real_data_dir):
    """``tickvault run --replay``: the replay lands in a database of its own, the Dagster
    webserver (behind the gRPC server) lists the lineage, the README's Dagster commands work
    verbatim against the instance; SIGINT (Ctrl-C) ends the supervisor, the collector and every
    Dagster process within 5 s."""
    data = tmp_path / "data"
    log = tmp_path / "run.log"
    env = {**os.environ, "TICKVAULT_DATABASE_URL": db_url, "TICKVAULT_METRICS_PORT": "0",
           "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("DAGSTER_PG_URL", None)
    env.pop("TICKVAULT_SPOOL_DIR", None)
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collector_daemon.cli", "run", "--replay",
                                 str(real_data_dir / CAPTURE), "--top-n", "all", "--ui-port", "0",
                                 "--data-dir", str(data)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        text = wait_log(log, r"Dagster UI at http://\S+ ", proc, timeout=300)
        ui_s = time.monotonic() - started
        url = re.search(r"Dagster UI at (http://\S+) ", text)[1]
        nodes = _gql(url + "/graphql", ASSETS)["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {"quotes", "trades", "deribit/instrument_universe", "deribit/trade_gaps",
                "deribit/trades_backfill", "candles", "parquet_export"} <= keys, keys
        text = wait_log(log, r"the replay is over", proc)
        assert "quotes: 197 rows written of 197 received" in text
        assert "exchange->receive" not in text            # meaningless in a replay: left out
        replay_db = db_url.rsplit("/", 1)[0] + "/" + db_url.rsplit("/", 1)[1] + "_replay"
        with psycopg.connect(replay_db) as conn:
            assert conn.execute("SELECT count(*) FROM quotes").fetchone()[0] == 197
        with psycopg.connect(db_url) as conn:             # never the live database
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'quotes'"
                                ).fetchone()[0] == 0
        readme = _readme_dagster_block(tmp_path, data)
        assert "Schedule: universe_hourly [RUNNING]" in readme, readme

        tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        names = {psutil.Process(p).name() for p in tree}
        assert len(tree) >= 4, names   # supervisor, gRPC server, webserver, daemon (+ workers)
        code, elapsed = stop_timed(proc, signal.SIGINT)
        deadline = time.monotonic() + STOP_LIMIT_S - elapsed
        alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 0 and elapsed < STOP_LIMIT_S and not alive, (code, elapsed, alive, text[-3000:])
    assert "killing it" not in text                    # every process stopped on its own
    print(f"\nUI answered after {ui_s:.1f} s; SIGINT -> all exited in {elapsed:.2f} s")


def _readme_dagster_block(tmp_path: Path, data: Path) -> str:
    """Run the README's Dagster command block verbatim, from a folder laid out like the
    checkout (.venv, and .data/dagster being this replay's DAGSTER_HOME); returns its output."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Orchestration (Dagster)"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    work = tmp_path / "checkout"
    (work / ".data").mkdir(parents=True)
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (work / ".data" / "dagster").symlink_to(data / "dagster-replay")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKVAULT_", "DAGSTER_"))}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
