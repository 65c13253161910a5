"""The daily private reconciliation (the Dagster ``private_reconciliation`` asset's library
call) against the emulator's signed REST: every fill and order update of the day once per
account, REST and stored counts agree, a wrong key is that account's error (no secret in it),
a second run inserts nothing, and the next day holds only its own fill."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import psycopg
import pytest

from collector_daemon.core.accounts import reconcile_day
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues import get_venue

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
FRAMES = [f"bybit/nautilus_test_data/ws_account_{n}.json" for n in ("execution", "order_filled")]
DAY = "2026-11-30"
HOUR_MS = 3_600_000


def test_reconcile_day_per_account(migrated_db_url, real_data_dir, monkeypatch) -> None:
    monkeypatch.setenv("TV_A", "secret-aaaa")
    monkeypatch.setenv("TV_B", "not-the-secret-bbbb")
    with psycopg.connect(migrated_db_url) as conn:
        ids = dict(conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES "
                                "('alpha', 'bybit', 'key-a', 'env:TV_A'), ('beta', 'bybit', 'key-b', 'env:TV_B') "
                                "RETURNING label, account_id").fetchall())
    day_ms = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1000)

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0))
        emu = server.venue
        emu.accounts = {"key-a": "secret-aaaa", "key-b": "secret-bbbb"}
        emu.private_frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
        emu.private_copies, emu.private_rest_only = 0, 6      # REST only: 0h, 5h, ..., 20h of DAY, 1h next day
        emu.private_start_ms, emu.private_step_ms = day_ms, 5 * HOUR_MS
        await server.start()
        try:
            venue = get_venue("bybit")
            settings = venue.load_settings(rest_url=server.rest_url, private_categories="linear")
            first = await reconcile_day(migrated_db_url, venue, settings, DAY)
            again = await reconcile_day(migrated_db_url, venue, settings, DAY)
            nxt = await reconcile_day(migrated_db_url, venue, settings, "2026-12-01")
            return first, again, nxt
        finally:
            await server.stop()

    first, again, nxt = asyncio.run(scenario())
    alpha, beta = first
    assert (alpha.label, alpha.error) == ("alpha", None)
    assert alpha.fetched == alpha.inserted == {"bybit_executions": 5, "bybit_orders": 5}
    assert alpha.executions_rest == alpha.executions_stored == 5
    assert beta.error is not None and "10004" in beta.error and "secret" not in beta.error
    assert beta.fetched == {} and beta.executions_stored == 0
    assert again[0].inserted == {"bybit_executions": 0, "bybit_orders": 0} and again[0].executions_stored == 5
    assert nxt[0].fetched == {"bybit_executions": 1, "bybit_orders": 1}
    with psycopg.connect(migrated_db_url) as conn:
        stored = conn.execute("SELECT account_id, count(*), min(exchange_ts), max(exchange_ts), "
                              "bool_and(source = 'rest') FROM bybit_executions GROUP BY 1").fetchall()
    assert [(s[0], s[1], s[4]) for s in stored] == [(ids["alpha"], 6, True)]


def test_private_reconciliation_asset(migrated_db_url, real_data_dir, monkeypatch) -> None:
    """The asset materialised in process for a deployment recording Bybit (TICKVAULT_VENUES
    read when its module loads): metadata per account and both checks."""
    import importlib
    import os
    import threading

    import dagster as dg

    from orchestration import partitions
    from orchestration.defs.assets import private   # (and what it imports) as the session has them
    from orchestration.resources import DatabaseResource, VenueApiResource

    monkeypatch.setenv("TV_A", "secret-aaaa")
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES ('alpha', 'bybit', 'key-a', 'env:TV_A')")
    day_ms = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1000)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def boot():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0))
        server.venue.accounts = {"key-a": "secret-aaaa"}
        server.venue.private_frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
        server.venue.private_copies, server.venue.private_rest_only = 0, 4
        server.venue.private_start_ms, server.venue.private_step_ms = day_ms, 5 * HOUR_MS
        await server.start()
        return server
    server = asyncio.run_coroutine_threadsafe(boot(), loop).result(60)
    venues = os.environ.get("TICKVAULT_VENUES")
    try:
        os.environ["TICKVAULT_VENUES"] = "bybit"   # only this module is reloaded with it
        importlib.reload(partitions)
        module = importlib.reload(private)
        result = dg.materialize([module.private_reconciliation], partition_key=DAY, resources={
            "database": DatabaseResource(url=migrated_db_url),
            "bybit": VenueApiResource(venue="bybit", base_url=server.rest_url,
                                      options={"private_categories": "linear"})})
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if venues is None:
            os.environ.pop("TICKVAULT_VENUES", None)
        else:
            os.environ["TICKVAULT_VENUES"] = venues
        importlib.reload(partitions)
        importlib.reload(private)
    assert result.success
    mat = result.asset_materializations_for_node("private_reconciliation")[0]
    meta = {k: getattr(v, "value", getattr(v, "data", v)) for k, v in mat.metadata.items()}
    assert (meta["accounts"], meta["executions_rest"], meta["executions_stored"]) == (1, 4, 4)
    assert meta["per_account"]["bybit/alpha"]["inserted"] == {"bybit_executions": 4, "bybit_orders": 4}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"executions_unique": True, "executions_match_rest": True}
