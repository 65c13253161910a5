"""Bybit's REST limits (600 requests per 5 s per IP; retCode 10006; HTTP 403 bans): three
processes reconciling at once share one budget kept in PostgreSQL and stay under the emulator's
IP limit while it also injects 10006 and 403 answers; the client retries a 10006 with backoff and
waits a 403 ban out; a ban taken by one budget holds every budget of the same key.

Real TimescaleDB, the emulator's signed REST on loopback, Nautilus' real v5 execution and order
frames re-keyed per account."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from collector_daemon.core.rest_budget import RequestRate, SharedBudget
from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.bybit.rest import BybitRest

pytestmark = pytest.mark.realdata

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
FRAMES = [f"bybit/nautilus_test_data/ws_account_{n}.json" for n in ("execution", "order_filled")]
DAY = "2026-11-30"
HOUR_MS = 3_600_000
ACCOUNTS = 4
IP_LIMIT = 50          # the emulator's requests per 5 s per IP
BUDGET = 40            # TICKVAULT_BYBIT_REST_REQUESTS_PER_5S of the three processes

RECONCILE = """
import asyncio, dataclasses, json, sys
from collector_daemon.core.accounts import reconcile_day
from collector_daemon.venues import get_venue
venue = get_venue("bybit")
reports = asyncio.run(reconcile_day(sys.argv[1], venue, venue.load_settings(), sys.argv[2]))
print(json.dumps([dataclasses.asdict(r) for r in reports]))
"""


def _emulator(real_data_dir: Path, secrets: dict[str, str], **config) -> tuple[EmulatorServer, asyncio.AbstractEventLoop]:
    """An emulator serving ``secrets``' accounts (5 fills and order updates each on DAY, every
    5 h from 00:00) on a loop of its own thread (other processes call it)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    day_ms = int(datetime.fromisoformat(DAY).replace(tzinfo=UTC).timestamp() * 1000)

    async def boot() -> EmulatorServer:
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit",
                                               wait_for_clients=0, **config))
        emu = server.venue
        emu.accounts = dict(secrets)
        emu.private_frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
        emu.private_copies, emu.private_rest_only = 0, 5
        emu.private_start_ms, emu.private_step_ms = day_ms, 5 * HOUR_MS
        await server.start()
        return server
    return asyncio.run_coroutine_threadsafe(boot(), loop).result(60), loop


def _stop(server: EmulatorServer, loop: asyncio.AbstractEventLoop) -> None:
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


def test_three_processes_share_the_ip_budget(migrated_db_url, real_data_dir) -> None:
    secrets = {f"key-{i}": f"secret-{i}-{i * 7919}" for i in range(ACCOUNTS)}
    with psycopg.connect(migrated_db_url) as conn:
        for i in range(ACCOUNTS):
            conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES (%s, 'bybit', %s, %s)",
                         (f"acct{i}", f"key-{i}", f"env:TV_BUDGET_{i}"))
    # 10 % of the answers are injected errors, alternating retCode 10006 and HTTP 403
    server, loop = _emulator(real_data_dir, secrets, rest_ip_limit=IP_LIMIT, rest_ban_s=30.0,
                             faults=Faults(seed=11, rest_errors=0.1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TICKVAULT_BYBIT_REST_URL": server.rest_url,
           "TICKVAULT_BYBIT_PRIVATE_CATEGORIES": "linear,option", "TICKVAULT_BYBIT_OPTION_BASE_COINS": "ETH,BTC",
           "TICKVAULT_BYBIT_REST_REQUESTS_PER_5S": str(BUDGET), "TICKVAULT_BYBIT_REST_BAN_WAIT_S": "1",
           "TICKVAULT_REST_BUDGET_SHARED": "true", "TICKVAULT_REST_BUDGET_KEY": "bybit test-ip",
           **{f"TV_BUDGET_{i}": secrets[f"key-{i}"] for i in range(ACCOUNTS)}}
    try:
        procs = [subprocess.Popen([sys.executable, "-c", RECONCILE, migrated_db_url, DAY], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=240) for p in procs]
        stats = server.stats()
    finally:
        _stop(server, loop)
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]
    limit = stats["rest_ip_limit"]
    # 3 processes x 4 accounts x (linear, option ETH, option BTC) x (executions, orders) + retries
    assert limit["requests"] >= 72
    assert limit["bans"] == limit["banned_answers"] == limit["limited"] == 0, limit
    assert 25 <= limit["max_in_window"] <= IP_LIMIT, limit     # the pace was the binding constraint
    faults = stats["totals"]["rest_faults"]            # injected 10006 ("rpc") and 403 ("http429")
    assert faults["rpc"] >= 1 and faults["http429"] >= 1, faults
    for out, _ in outs:
        reports = json.loads(out.strip().splitlines()[-1])
        assert [(r["label"], r["error"], r["executions_rest"], r["executions_stored"]) for r in reports] == [
            (f"acct{i}", None, 5, 5) for i in range(ACCOUNTS)]
    with psycopg.connect(migrated_db_url) as conn:
        per_account = conn.execute("SELECT a.label, count(e.*), count(DISTINCT e.exec_id) FROM accounts a "
                                   "LEFT JOIN bybit_executions e USING (account_id) GROUP BY 1 ORDER BY 1").fetchall()
        orders = conn.execute("SELECT count(*) FROM bybit_orders").fetchone()[0]
        budget = conn.execute("SELECT budget_key FROM rest_budget").fetchall()
    assert per_account == [(f"acct{i}", 5, 5) for i in range(ACCOUNTS)]      # every fill exactly once
    assert orders == 5 * ACCOUNTS
    assert budget == [("bybit test-ip",)]


def test_10006_is_retried_with_backoff_and_a_403_ban_is_waited_out(real_data_dir) -> None:
    """A client pacing far beyond the emulator's limit of 5 per 5 s (one request at a time):
    the 6th request gets 10006 and is retried, the retry exceeds the limit again and bans the IP
    for 1 s (HTTP 403); the client bans its budget for 1.5 s, sends nothing during the ban, and
    every call completes."""
    server, loop = _emulator(real_data_dir, {}, rest_ip_limit=5, rest_ban_s=1.0)

    async def calls() -> tuple[list[int], BybitRest, float]:
        async with BybitRest(server.rest_url, max_concurrency=1, requests_per_5s=600, ban_wait_s=1.5,
                             backoff_max_s=0.2, attempts=6) as rest:
            started = time.monotonic()
            sizes = [len(await rest.instruments("spot")) for _ in range(8)]
            return sizes, rest, time.monotonic() - started
    try:
        sizes, rest, elapsed = asyncio.run_coroutine_threadsafe(calls(), loop).result(60)
        limit = server.stats()["rest_ip_limit"]
    finally:
        _stop(server, loop)
    assert sizes == [557] * 8
    assert (limit["requests"], limit["limited"], limit["bans"], limit["banned_answers"]) == (10, 1, 1, 1), limit
    assert (rest.calls, rest.retries, rest.bans) == (10, 2, 1)
    # the budget's wait plus the retry's backoff (< 0.2 s) before it cover the 1.5 s ban
    assert rest.budget.waited_s > 1.3 and elapsed >= 1.5


def test_a_ban_holds_every_budget_of_the_key(migrated_db_url) -> None:
    """Two budgets of one key on separate connections (as two processes): after one records a
    30 s ban, the other's next token is 30 s away; another key is untouched."""
    rate = RequestRate(100, 5.0)

    async def scenario() -> tuple[float, float]:
        a, b, other = (SharedBudget(migrated_db_url, k, rate) for k in ("bybit ip-1", "bybit ip-1", "bybit ip-2"))
        try:
            await a.acquire()
            await a.ban(30.0)
            return await b._take(), await other._take()
        finally:
            for budget in (a, b, other):
                await budget.aclose()
    held, free = asyncio.run(scenario())
    assert -held / rate.per_s == pytest.approx(30.0, abs=1.0)
    assert free == rate.bucket_size - 1
