"""The daily private reconciliation (the Dagster ``private_reconciliation`` asset's library
call) against the emulator's signed REST: every fill and order update of the day once per
account, REST and stored counts agree, a wrong key is that account's error (no secret in it),
a second run inserts nothing, the next day holds only its own fill, open private gaps are
settled, and a gap across midnight by the day it ends in (REST asked from the gap's start)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import psycopg
import pytest

from collector_daemon.core.accounts import reconcile_day
from collector_daemon.core.gaps import Gap, GapStatus, insert_gaps_sync
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues import get_venue

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
FRAMES = [f"bybit/nautilus_test_data/ws_account_{n}.json" for n in ("execution", "order_filled")]
DAY = "2026-11-30"
HOUR_MS = 3_600_000


def _alpha_and_beta(dsn: str, monkeypatch, *, beta_secret: str) -> dict[str, int]:
    """Accounts alpha (key-a, its right secret) and beta (key-b, ``beta_secret``: the emulator
    knows ``secret-bbbb``); label -> account_id."""
    monkeypatch.setenv("TV_A", "secret-aaaa")
    monkeypatch.setenv("TV_B", beta_secret)
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES "
                                 "('alpha', 'bybit', 'key-a', 'env:TV_A'), ('beta', 'bybit', 'key-b', 'env:TV_B') "
                                 "RETURNING label, account_id").fetchall())


def _open_gaps(dsn: str, windows: dict[str, tuple[int, str, float, float]]) -> None:
    """Record open private lost windows: reason -> (account_id, stream, start µs, end µs)."""
    with psycopg.connect(dsn) as conn:
        insert_gaps_sync(conn, [Gap("bybit", stream, "*", int(a), int(b), None, None, "disconnect", GapStatus.OPEN,
                                    name, account_id=account) for name, (account, stream, a, b) in windows.items()])


def test_reconcile_day_per_account(migrated_db_url, real_data_dir, monkeypatch) -> None:
    ids = _alpha_and_beta(migrated_db_url, monkeypatch, beta_secret="not-the-secret-bbbb")
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
    """``bybit/private_reconciliation`` materialised in process for one day x account (partition
    ``alpha|2026-11-30``): only alpha is reconciled (beta's rows stay untouched), its metadata
    and the three inline checks, and the rows it stored."""
    import threading

    import dagster as dg

    from orchestration.defs.assets.private import build_private_reconciliation
    from orchestration.resources import DatabaseResource, VenueApiResource

    ids = _alpha_and_beta(migrated_db_url, monkeypatch, beta_secret="secret-bbbb")
    with psycopg.connect(migrated_db_url) as conn:
        # a wallet snapshot of the evening: positions_wallet_fresh then fails on positions only
        conn.execute("INSERT INTO bybit_wallet (venue, account_id, account_type, coin, exchange_ts, receive_ts, "
                     "source) VALUES ('bybit', %s, 'UNIFIED', 'USDT', %s, %s, 'ws')",
                     (ids["alpha"], f"{DAY} 22:00+00", f"{DAY} 22:00+00"))
    day_ms = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1000)
    # alpha's stream was down across the day's start
    _open_gaps(migrated_db_url, {"midnight": (ids["alpha"], "executions", (day_ms - 30_000) * 1000,
                                              (day_ms + 30_000) * 1000)})
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def boot():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0))
        server.venue.accounts = {"key-a": "secret-aaaa", "key-b": "secret-bbbb"}
        server.venue.private_frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
        server.venue.private_copies, server.venue.private_rest_only = 0, 4
        server.venue.private_start_ms, server.venue.private_step_ms = day_ms, 5 * HOUR_MS
        await server.start()
        return server
    server = asyncio.run_coroutine_threadsafe(boot(), loop).result(60)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("bybit_accounts", ["alpha", "beta"])
    try:
        result = dg.materialize(
            [build_private_reconciliation("bybit")], partition_key=f"alpha|{DAY}", instance=instance,
            resources={"database": DatabaseResource(url=migrated_db_url),
                       "bybit": VenueApiResource(venue="bybit", base_url=server.rest_url, max_concurrency=2,
                                                 options={"private_categories": "linear"})})
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
    assert result.success
    [mat] = [e.materialization for e in result.get_asset_materialization_events()]
    assert mat.asset_key == dg.AssetKey(["bybit", "private_reconciliation"])
    assert mat.partition == f"alpha|{DAY}"
    meta = {k: getattr(v, "value", getattr(v, "data", v)) for k, v in mat.metadata.items()}
    assert (meta["account"], meta["account_id"], meta["executions_rest"], meta["executions_stored"]) == (
        "alpha", ids["alpha"], 4, 4)
    assert meta["inserted"] == {"bybit_executions": 4, "bybit_orders": 4}
    assert meta["gaps_resolved"] == {"executions": {"backfilled": 1}}
    assert meta["reached_back_to"] == "2026-11-29T23:59:30+00:00"
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert {n: c.passed for n, c in checks.items()} == {
        "executions_unique": True, "executions_match_rest": True, "positions_wallet_fresh": False}
    fresh = {k: v.value for k, v in checks["positions_wallet_fresh"].metadata.items()}
    assert fresh["stale"] == ["bybit_positions"]
    assert fresh["tables"]["bybit_wallet"]["age_s"] == 7200.0
    with psycopg.connect(migrated_db_url) as conn:
        stored = conn.execute("SELECT account_id, count(*) FROM bybit_executions GROUP BY 1").fetchall()
        orders = conn.execute("SELECT account_id, count(*) FROM bybit_orders GROUP BY 1").fetchall()
    assert stored == [(ids["alpha"], 4)] and orders == [(ids["alpha"], 4)]


def test_reconcile_day_resolves_the_accounts_open_private_gaps(migrated_db_url, real_data_dir, monkeypatch) -> None:
    """Open private gaps whose reconciliations all failed are settled by the day's: inside a
    past day executions ``backfilled``, orders ``unrecoverable`` (REST keeps an order's latest
    state only), positions and wallet ``unrecoverable`` (a current snapshot only); on the
    current day positions ``backfilled`` (its snapshot was taken); an account whose
    reconciliation fails, another day and a window across midnight stay open (the day the
    window ends in settles it: the next test)."""

    ids = _alpha_and_beta(migrated_db_url, monkeypatch, beta_secret="not-the-secret-bbbb")
    day_us = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1e6)
    today = datetime.now(UTC).date()
    today_us = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1e6)
    while time.time() * 1e6 < today_us + 2e6:   # the current day's window must have ended
        time.sleep(0.5)
    windows = {   # name -> (account, stream, start µs, end µs)
        **{f"day-{s}": ("alpha", s, day_us + 3 * HOUR_MS * 1000, day_us + 3 * HOUR_MS * 1000 + 60e6)
           for s in ("executions", "orders", "positions", "wallet")},
        "beta-day": ("beta", "executions", day_us + 3 * HOUR_MS * 1000, day_us + 3 * HOUR_MS * 1000 + 60e6),
        "next-day": ("alpha", "executions", day_us + 26 * HOUR_MS * 1000, day_us + 26 * HOUR_MS * 1000 + 60e6),
        "midnight": ("alpha", "executions", day_us + 24 * HOUR_MS * 1000 - 30e6, day_us + 24 * HOUR_MS * 1000 + 30e6),
        "today-positions": ("alpha", "positions", today_us, today_us + 1e6),
    }
    _open_gaps(migrated_db_url, {name: (ids[label], *rest) for name, (label, *rest) in windows.items()})

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0))
        server.venue.accounts = {"key-a": "secret-aaaa", "key-b": "secret-bbbb"}
        server.venue.private_frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
        await server.start()
        try:
            venue = get_venue("bybit")
            settings = venue.load_settings(rest_url=server.rest_url, private_categories="linear")
            return (await reconcile_day(migrated_db_url, venue, settings, DAY),
                    await reconcile_day(migrated_db_url, venue, settings, today.isoformat(), labels=["alpha"]))
        finally:
            await server.stop()

    (alpha, beta), (alpha_today,) = asyncio.run(scenario())
    assert alpha.gaps_resolved == {"executions": {"backfilled": 1}, "orders": {"unrecoverable": 1},
                                   "positions": {"unrecoverable": 1}, "wallet": {"unrecoverable": 1}}
    assert beta.error is not None and beta.gaps_resolved == {}
    assert alpha_today.gaps_resolved == {"positions": {"backfilled": 1}}
    with psycopg.connect(migrated_db_url) as conn:
        gaps = {r[0]: r[1:] for r in conn.execute(
            "SELECT reason, status, resolved_at IS NOT NULL FROM data_gaps").fetchall()}
        reasons = dict(conn.execute("SELECT stream, reason FROM data_gaps WHERE status = 'unrecoverable'").fetchall())
    assert gaps == {   # an unrecoverable gap's reason is the stream's; the others keep the recorded one
        "day-executions": ("backfilled", True), reasons["orders"]: ("unrecoverable", True),
        reasons["positions"]: ("unrecoverable", True), reasons["wallet"]: ("unrecoverable", True),
        "beta-day": ("open", False), "next-day": ("open", False), "midnight": ("open", False),
        "today-positions": ("backfilled", True)}
    assert reasons["orders"].startswith("Bybit's /v5/order/history returns each order's latest state only")
    assert reasons["positions"] == ("bybit REST serves positions as the current snapshot only, and no "
                                    "reconciliation succeeded while this window's day was current")


def test_a_window_across_midnight_is_settled_by_the_day_it_ends_in(migrated_db_url, real_data_dir,
                                                                    monkeypatch) -> None:
    """An open private gap from 23:59:30 to 00:00:30 is settled by the reconciliation of the day
    it ends in: REST is asked from the gap's start (``reached_back_us``), the fill at 23:59:40
    that only REST knows is stored, the day's own count stays the day's (REST and stored agree),
    and the gaps resolve (executions ``backfilled``, orders ``unrecoverable``); reconciling the
    day it began in afterwards inserts nothing."""

    ids = _alpha_and_beta(migrated_db_url, monkeypatch, beta_secret="secret-bbbb")
    midnight_ms = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1000) + 24 * HOUR_MS
    gap_start_us, gap_end_us = (midnight_ms - 30_000) * 1000, (midnight_ms + 30_000) * 1000
    _open_gaps(migrated_db_url, {f"midnight-{stream}": (ids["alpha"], stream, gap_start_us, gap_end_us)
                                 for stream in ("executions", "orders")})

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0))
        emu = server.venue
        emu.accounts = {"key-a": "secret-aaaa", "key-b": "secret-bbbb"}
        emu.private_frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
        emu.private_copies, emu.private_rest_only = 0, 2      # REST only: 23:59:40 and 00:59:40
        emu.private_start_ms, emu.private_step_ms = midnight_ms - 20_000, HOUR_MS
        await server.start()
        try:
            venue = get_venue("bybit")
            settings = venue.load_settings(rest_url=server.rest_url, private_categories="linear")
            ends_in = await reconcile_day(migrated_db_url, venue, settings, "2026-12-01", labels=["alpha"])
            began_in = await reconcile_day(migrated_db_url, venue, settings, DAY, labels=["alpha"])
            return ends_in, began_in
        finally:
            await server.stop()

    ([ends_in], [began_in]) = asyncio.run(scenario())
    assert (ends_in.error, ends_in.reached_back_us) == (None, gap_start_us)
    assert ends_in.fetched == ends_in.inserted == {"bybit_executions": 2, "bybit_orders": 2}
    assert ends_in.executions_rest == ends_in.executions_stored == 1
    assert ends_in.gaps_resolved == {"executions": {"backfilled": 1}, "orders": {"unrecoverable": 1}}
    assert (began_in.reached_back_us, began_in.gaps_resolved) == (None, {})
    assert began_in.inserted == {"bybit_executions": 0, "bybit_orders": 0}
    assert began_in.executions_rest == began_in.executions_stored == 1
    with psycopg.connect(migrated_db_url) as conn:
        fills = conn.execute("SELECT exchange_ts, source FROM bybit_executions WHERE account_id = %s "
                             "ORDER BY exchange_ts", (ids["alpha"],)).fetchall()
        gaps = dict(conn.execute("SELECT stream, status FROM data_gaps").fetchall())
    assert fills == [(datetime(2026, 11, 30, 23, 59, 40, tzinfo=UTC), "rest"),
                     (datetime(2026, 12, 1, 0, 59, 40, tzinfo=UTC), "rest")]
    assert gaps == {"executions": "backfilled", "orders": "unrecoverable"}
