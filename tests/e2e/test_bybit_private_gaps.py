"""One account's private connection dropped by the emulator: its lost window is in data_gaps
once per private stream with the account's id, resolved by the REST reconciliation after the
reconnect (executions, positions, wallet backfilled; orders unrecoverable: Bybit's order history
keeps only each order's latest state); the other accounts have no gap."""

from __future__ import annotations

import asyncio
import json
import time

import psycopg
import pytest

from collector_daemon.daemon import Collector
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.settings import load_settings
from collector_daemon.venues import get_venue

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
FRAMES = [f"bybit/nautilus_test_data/ws_account_{n}.json" for n in ("execution", "order_filled", "position", "wallet")]
SECRETS = {"key-a": "sEcReT-aaaa-1111", "key-b": "sEcReT-bbbb-2222", "key-c": "sEcReT-cccc-3333"}
COPIES = 20


def test_one_account_drop_is_a_private_gap_resolved_by_reconciliation(migrated_db_url, tmp_path,
                                                                        real_data_dir, monkeypatch):
    for i, secret in enumerate(SECRETS.values()):
        monkeypatch.setenv(f"TV_SECRET_{i}", secret)
    with psycopg.connect(migrated_db_url) as conn:
        ids = dict(conn.execute(
            "INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES "
            + ", ".join(f"('acct{i}', 'bybit', '{k}', 'env:TV_SECRET_{i}')" for i, k in enumerate(SECRETS))
            + " RETURNING key_id, account_id").fetchall())
    frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", speed=3,
                                               wait_for_clients=1 + len(SECRETS)))
        emu = server.venue
        emu.accounts, emu.private_frames, emu.private_copies = dict(SECRETS), frames, 0
        events = server.replayer.events
        events += emu.private_events(list(SECRETS), COPIES, events[0].ts, events[-1].ts)
        events.sort(key=lambda e: e.ts)
        await server.start()
        settings = load_settings(**{
            "database_url": migrated_db_url, "venue": "bybit", "categories": "linear", "linear_symbols": "BTCUSDT",
            "metrics_port": "", "spool_dir": tmp_path / "spool", "backoff_min_s": 0.05, "backoff_max_s": 0.3,
            "flush_interval_s": 0.1, "stats_interval_s": 3600, "private_categories": "linear",
            "reconcile_lookback_days": 1})
        collector = Collector(settings, ws_url={"linear": server.ws_urls["/v5/public/linear"],
                                                "private": server.ws_urls["/v5/private"]},
                              rest_url=server.rest_url, fresh_universe=True)
        run = asyncio.create_task(collector.run())
        try:
            deadline = time.monotonic() + 60
            while not (emu.sessions_of("key-a") and collector.accounts is not None
                       and len(collector.accounts.sessions) == len(SECRETS)
                       and all(s.reconciled for _, s in collector.accounts.sessions.values())):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)   # some private traffic first
            (sid,) = emu.sessions_of("key-a")
            (client,) = [c for c in server.replayer.clients if c.id == sid]
            dropped_at = time.time()
            client.transport.abort()
            session = collector.accounts.sessions[ids["key-a"]][1]
            while not (session.connection.connects == 2 and session.reconciled == 2):
                assert time.monotonic() < deadline + 60
                await asyncio.sleep(0.1)
            return dropped_at, [s.reconciled for _, s in collector.accounts.sessions.values()]
        finally:
            collector.request_stop()
            await asyncio.wait_for(run, 60)
            await server.stop()

    dropped_at, reconciled = asyncio.run(scenario())
    assert sorted(reconciled) == [1, 1, 2]
    with psycopg.connect(migrated_db_url) as conn:
        gaps = conn.execute(
            "SELECT account_id, stream, instrument_name, detected_by, status, reason, "
            "extract(epoch FROM gap_start), extract(epoch FROM gap_end), resolved_at IS NOT NULL "
            "FROM data_gaps ORDER BY stream").fetchall()
    reasons = get_venue("bybit").private_streams
    assert [(g[0], g[1], g[2], g[3], g[4], g[8]) for g in gaps] == [
        (ids["key-a"], s, "*", "disconnect", "unrecoverable" if reasons[s] else "backfilled", True)
        for s in ("executions", "orders", "positions", "wallet")]
    assert gaps[1][5] == reasons["orders"] and "latest state only" in gaps[1][5]
    assert "reconciled over REST" in gaps[0][5]
    starts, ends = {float(g[6]) for g in gaps}, {float(g[7]) for g in gaps}
    assert len(starts) == len(ends) == 1                     # one window, the same for each stream
    (start,), (end,) = starts, ends
    assert start <= dropped_at < end < dropped_at + 10       # from the last frame to the resubscription
