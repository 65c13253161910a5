"""Bybit private data through the real Collector (venue bybit): accounts loaded from the database
at start and followed without a restart (``tickvault accounts add`` / ``disable``), the four
private streams per account, REST reconciliation at start (signed requests checked by the
emulator, two 7-day windows, cursor paging, injected 10006 and 403 answers), a wrong key refused
for one account only, and no secret anywhere: logs, tables, errors, metrics, ``ps``, the CLI.

Traffic: Nautilus' real v5 ``execution``, ``order``, ``position`` and ``wallet`` messages,
re-keyed per account by the emulator: 3 copies streamed, 2 more that only REST knows (fills made
while the stream was down), spread over the last 9 days."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from collector_daemon import cli
from collector_daemon.daemon import Collector
from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.settings import load_settings

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
FRAMES = [f"bybit/nautilus_test_data/ws_account_{n}.json" for n in ("execution", "order_filled", "position", "wallet")]
SECRETS = {"key-a": "sEcReT-aaaa-1111", "key-b": "sEcReT-bbbb-2222", "key-c": "sEcReT-cccc-3333",
           "key-e": "sEcReT-eeee-5555"}
WRONG = "not-the-secret-of-key-c"
STREAMED, REST_ONLY = 3, 2
DAY_MS = 86_400_000


def counts(dsn: str) -> dict[tuple[str, str], int]:
    """(table, account label) -> rows."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for table in ("bybit_executions", "bybit_orders", "bybit_positions", "bybit_wallet"):
            for label, n in conn.execute(f"SELECT a.label, count(*) FROM {table} t JOIN accounts a "
                                         "USING (account_id) GROUP BY a.label").fetchall():
                out[(table, label)] = n
    return out


def test_collector_follows_accounts_and_reconciles(migrated_db_url, tmp_path, real_data_dir, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TV_SECRET_A", SECRETS["key-a"])
    (tmp_path / "secret-b").write_text(SECRETS["key-b"] + "\n")
    monkeypatch.setenv("TV_SECRET_C", WRONG)                       # gamma: a wrong key
    monkeypatch.setenv("TV_SECRET_E", SECRETS["key-e"])
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", migrated_db_url)
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute(
            "INSERT INTO accounts (label, venue, key_id, secret_ref, run_tag, enabled) VALUES "
            "('alpha', 'bybit', 'key-a', 'env:TV_SECRET_A', 'strat-1', true), "
            f"('beta', 'bybit', 'key-b', 'file:{tmp_path / 'secret-b'}', NULL, true), "
            "('gamma', 'bybit', 'key-c', 'env:TV_SECRET_C', NULL, true), "
            "('off', 'bybit', 'key-d', 'env:TV_SECRET_D', NULL, false)")
    now_ms = time.time_ns() // 1_000_000
    frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]

    async def wait_for(what, check, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {counts(migrated_db_url)}"
            await asyncio.sleep(0.2)

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0,
                                               faults=Faults(seed=7, rest_errors=0.15)))
        emu = server.venue
        emu.accounts = dict(SECRETS)
        emu.private_frames = frames
        emu.private_copies, emu.private_rest_only = STREAMED, REST_ONLY
        emu.private_start_ms, emu.private_step_ms = now_ms - 9 * DAY_MS, 2 * DAY_MS
        await server.start()
        settings = load_settings(**{
            "database_url": migrated_db_url, "venue": "bybit", "categories": "linear", "linear_symbols": "BTCUSDT",
            "metrics_port": 0, "spool_dir": tmp_path / "spool", "backoff_min_s": 0.05, "backoff_max_s": 0.3,
            "flush_interval_s": 0.1, "stats_interval_s": 3600, "rest_ban_wait_s": 0.05, "refused_retry_s": 0.5,
            "status_interval_s": 1,
            "private_categories": "linear", "reconcile_lookback_days": 10, "accounts_refresh_s": 30})
        collector = Collector(settings, ws_url={"linear": server.ws_urls["/v5/public/linear"],
                                                "private": server.ws_urls["/v5/private"]},
                              rest_url=server.rest_url, fresh_universe=True)
        run = asyncio.create_task(collector.run())
        try:
            full = STREAMED + REST_ONLY
            coins = len(frames[3]["data"][0]["coin"])   # a wallet row per coin
            expected = {"bybit_executions": full, "bybit_orders": full,   # positions, wallet: + the REST snapshot
                        "bybit_positions": STREAMED + 1, "bybit_wallet": (STREAMED + 1) * coins}
            await wait_for("alpha and beta", lambda: all(
                counts(migrated_db_url).get((t, who)) == n for t, n in expected.items() for who in ("alpha", "beta")))
            keeper = collector.accounts
            gamma = next(s for a, s in keeper.sessions.values() if a.label == "gamma")
            await wait_for("gamma refused", lambda: gamma.connection.refused)
            assert gamma.reconciled == 0   # reconciled only once authenticated and subscribed
            await asyncio.sleep(settings.status_interval_s + 0.5)   # a heartbeat with every state
            with psycopg.connect(migrated_db_url) as conn:
                status = conn.execute("SELECT stats->'accounts' FROM collector_status").fetchone()[0]
            assert {k: v["state"] for k, v in status.items()} == {
                "alpha": "streaming", "beta": "streaming", "gamma": "refused"}
            metrics = httpx.get(f"http://127.0.0.1:{collector._metrics.port}/metrics").text
            # followed without a restart: the CLI adds epsilon and disables beta
            assert await asyncio.to_thread(cli.main, ["accounts", "add", "--venue", "bybit", "--label", "epsilon",
                                                      "--key-id", "key-e", "--secret-ref", "env:TV_SECRET_E"]) == 0
            assert await asyncio.to_thread(cli.main, ["accounts", "disable", "--venue", "bybit", "beta"]) == 0
            await wait_for("epsilon", lambda: all(counts(migrated_db_url).get((t, "epsilon")) == n
                                                  for t, n in expected.items()))
            await wait_for("beta stopped", lambda: {a.label for a, _ in keeper.sessions.values()}
                           == {"alpha", "gamma", "epsilon"})
            refreshes = keeper.refreshes
            return metrics, refreshes, dict(server.replayer.rest_faults)
        finally:
            collector.request_stop()
            await asyncio.wait_for(run, 60)
            await server.stop()

    metrics, refreshes, faults = asyncio.run(scenario())
    assert faults["rpc"] >= 1 and faults["http429"] >= 1   # 10006 and 403 answered, reconciliation finished
    assert refreshes <= 4   # NOTIFY drove the changes (the periodic re-read is every 30 s)
    got = counts(migrated_db_url)
    assert not any(who in ("gamma", "off") for _, who in got)               # the wrong key and the disabled one
    with psycopg.connect(migrated_db_url) as conn:
        execs = conn.execute("SELECT a.label, a.key_id, e.exec_id, e.run_tag, e.source, "
                             "(extract(epoch FROM e.exchange_ts) * 1000)::bigint "
                             "FROM bybit_executions e JOIN accounts a USING (account_id)").fetchall()
        orders = conn.execute("SELECT a.key_id, o.order_id, o.order_status, o.cum_exec_qty::text, o.price::text "
                              "FROM bybit_orders o JOIN accounts a USING (account_id)").fetchall()
        wallet = conn.execute("SELECT a.label, w.coin, w.wallet_balance::text, w.total_equity::text, w.source "
                              "FROM bybit_wallet w JOIN accounts a USING (account_id)").fetchall()
        events = conn.execute("SELECT connection_id, refused_channels, reason FROM connection_events "
                              "WHERE refused_channels IS NOT NULL").fetchall()
        dump = json.dumps([conn.execute(f"SELECT * FROM {t}").fetchall() for t in (
            "accounts", "bybit_executions", "bybit_orders", "bybit_positions", "bybit_wallet", "connection_events",
            "rejected_messages", "collector_status")], default=str)
    # every execution exactly once per account (stream + REST), nothing of one account under another
    for label, key in (("alpha", "key-a"), ("beta", "key-b"), ("epsilon", "key-e")):
        mine = [e for e in execs if e[0] == label]
        assert sorted(int(e[2].rsplit("-", 1)[1]) for e in mine) == list(range(STREAMED + REST_ONLY))
        assert all(e[1] == key and f"-{key}-" in e[2] for e in mine)
        assert {e[4] for e in mine} == {"ws", "rest"}
        assert sorted(e[5] for e in mine) == [now_ms - 9 * DAY_MS + k * 2 * DAY_MS
                                              for k in range(STREAMED + REST_ONLY)]   # both 7-day windows
        assert {e[3] for e in mine} == ({"strat-1"} if label == "alpha" else {None})
    order = frames[1]["data"][0]
    assert all(f"-{o[0]}-" in o[1] and o[2:] == ("Filled", order["cumExecQty"], order["price"]) for o in orders)
    coins = {c["coin"]: c for c in frames[3]["data"][0]["coin"]}
    assert all(w[2] == coins[w[1]]["walletBalance"] and w[3] == frames[3]["data"][0]["totalEquity"] for w in wallet)
    assert {w[4] for w in wallet} == {"ws", "rest"}
    assert any(e[0] == "bybit-private-gamma" and "Request not authorized" in e[2] for e in events)
    log = caplog.text
    assert "bybit-private-gamma: setup request failed" in log and "signature verification failed" in log
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    listing = subprocess.run([str(Path(sys.executable).parent / "tickvault"), "accounts", "list"],
                             capture_output=True, text=True,
                             env={"TICKVAULT_DATABASE_URL": migrated_db_url, "PATH": "/usr/bin:/bin"})
    assert listing.returncode == 0 and "env:TV_SECRET_A" in listing.stdout
    for secret in [*SECRETS.values(), WRONG]:
        for where, text in (("log", log), ("tables", dump), ("metrics", metrics), ("ps", ps),
                            ("accounts list", listing.stdout + listing.stderr)):
            assert secret not in text, where
