"""The option endpoint through the real Connection: acks are COMMAND_RESP without req_id (matched by
their topics), refused topics are recorded and retried, the option pong differs, and the real
tardis-node v5 option frames (time-aligned to the 2026-08-09 capture) land with exact values."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import psycopg
import pytest
from aiolimiter import AsyncLimiter

from collector_daemon.connection import Connection
from collector_daemon.daemon import Collector
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.metrics import Stats
from collector_daemon.pipeline import Pipeline
from collector_daemon.settings import load_settings
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues.bybit.protocol import MAX_ARGS_CHARS, BybitProtocol, topic_of

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
TARDIS = "bybit/tardis-node_test-embedded_bybit_ws_messages_v5+legacy.jsonl"
CHANNELS = ["publicTrade.BTC", "tickers.SOL-28APR23-24-C", "tickers.ETH-30JUN23-200-P", "tickers.ETH-1JAN20-1-C"]


def test_option_connection_command_resp_refusals_and_rows(migrated_db_url, real_data_dir):
    frames = [json.loads(line) for line in (real_data_dir / TARDIS).read_text().splitlines() if line.strip()]
    option = [f for f in frames if f.get("topic") in CHANNELS]
    assert len(option) == 3

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", speed=20,
                                               trades=real_data_dir / TARDIS, align_trades=True,
                                               close_when_done=True, wait_for_clients=1))
        await server.start()
        writer = BatchWriter(migrated_db_url, venue="bybit")
        await writer.open()
        pipeline = Pipeline(writer.write, flush_interval_s=0.1)
        pipeline.start()
        stats = Stats(venue="bybit")
        conn = Connection(BybitProtocol(("option",), ("BTC", "ETH", "SOL")), server.ws_urls["/v5/public/option"],
                          "bybit-option-0", pipeline, stats, AsyncLimiter(10, 1), backoff_min_s=0.05,
                          backoff_max_s=0.2, refused_retry_s=0.2, stop_on_replay_end=True, endpoint="option")
        await conn.set_channels(CHANNELS)
        try:
            await asyncio.wait_for(conn.run(), 60)
        finally:
            await pipeline.close()
            await writer.close()
            await server.stop()
        return conn, stats

    conn, stats = asyncio.run(scenario())
    assert conn.subscribed == set(CHANNELS[:3]) and conn.refused == {CHANNELS[3]}
    assert stats.rejected == 0 and stats.refused_channels >= 2       # refused, then retried
    with psycopg.connect(migrated_db_url) as db:
        tickers = db.execute("SELECT instrument_name, best_bid_price::text, bid_iv::text, mark_iv::text, "
                             "delta::text, theta::text, cross_seq FROM bybit_tickers ORDER BY instrument_name").fetchall()
        trades = db.execute("SELECT category, instrument_name, trade_id, price::text, amount::text, direction, "
                            "block_trade FROM bybit_trades").fetchall()
        events = db.execute("SELECT refused_channels FROM connection_events WHERE event = 'subscribed' "
                            "ORDER BY event_id").fetchall()
    data = {f["data"]["symbol"]: f["data"] for f in option if f["topic"].startswith("tickers.")}
    assert tickers == [(s, d["bidPrice"], d["bidIv"], d["markPriceIv"], d["delta"], d["theta"], None)
                       for s, d in sorted(data.items())]
    [t] = [f for f in option if f["topic"] == "publicTrade.BTC"][0]["data"]
    assert trades == [("option", t["s"], t["i"], t["p"], t["v"], "sell", False)]
    assert events[0] == ([CHANNELS[3]],)


def test_daemon_spreads_long_option_topics_under_the_args_budget(tmp_path):
    settings = load_settings(database_url="postgresql://u@127.0.0.1:9/x", venue="bybit", categories="option",
                             metrics_port="", spool_dir=tmp_path / "spool", channels_per_connection=5000)
    collector = Collector(settings, ws_url="ws://127.0.0.1:9/v5/public/option")
    names = [f"ETH-26SEP25-{k}-{t}-USDT" for k in range(1000, 2000, 2) for t in "CP"]   # 1,000 options
    collector.channels = collector.protocol.channels_for(names)
    asyncio.run(collector._rebalance())
    per = [conn.desired for conn in collector.connections]
    assert len(per) >= 2 and sum(map(len, per)) == len(collector.channels)
    for desired in per:   # what one subscribe set would send, as JSON args
        assert len(json.dumps([topic_of(c) for c in desired])) < MAX_ARGS_CHARS


def test_option_unsubscribe_is_matched_by_its_topics(migrated_db_url, real_data_dir):
    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", speed=1,
                                               trades=real_data_dir / TARDIS, align_trades=True))
        await server.start()
        writer = BatchWriter(migrated_db_url, venue="bybit")
        await writer.open()
        pipeline = Pipeline(writer.write, flush_interval_s=0.1)
        pipeline.start()
        conn = Connection(BybitProtocol(("option",), ("BTC", "ETH", "SOL")), server.ws_urls["/v5/public/option"],
                          "bybit-option-0", pipeline, Stats(venue="bybit"), AsyncLimiter(10, 1),
                          request_timeout_s=5, endpoint="option")
        await conn.set_channels(CHANNELS[:3])
        task = asyncio.create_task(conn.run())
        try:
            seen = []
            for want in (set(CHANNELS[:3]), {CHANNELS[0]}):
                deadline = time.monotonic() + 20
                while conn.subscribed != want:
                    assert time.monotonic() < deadline, conn.subscribed
                    await asyncio.sleep(0.02)
                seen.append(set(conn.subscribed))
                await conn.set_channels(CHANNELS[:1])
            client = server.stats()["clients"][0]
            return seen, client["subscriptions"], task.done()
        finally:
            await conn.stop()
            await asyncio.gather(task, return_exceptions=True)
            await pipeline.close()
            await writer.close()
            await server.stop()

    seen, on_server, ended = asyncio.run(scenario())
    assert seen == [set(CHANNELS[:3]), {CHANNELS[0]}] and not ended
    assert on_server == ["option|" + CHANNELS[0]]
