"""Bybit end to end on the real 2026-08-09 v5 capture (linear + spot): emulator (real WebSockets
on loopback, one endpoint per category) -> Collector(venue=bybit) -> TimescaleDB. Stored rows are
compared with what the emulator sent and, value by value, with the capture read independently."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from pathlib import Path

import asyncpg
import psycopg
import pytest

from collector_daemon.core.gaps import Gap, GapStatus, insert_gap
from collector_daemon.core.recovery import GapRecovery
from collector_daemon.daemon import Collector, Summary
from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.settings import load_settings
from collector_daemon.storage.writer import BatchWriter, init_connection
from collector_daemon.venues import get_venue
from collector_daemon.venues.bybit import messages as m
from collector_daemon.venues.bybit.venue import WINDOW_MARGIN_US

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
LINEAR = "BTCUSDT,ETHUSDT,SOLUSDT,DOGEUSDT"


def capture(real: Path) -> tuple[dict, dict]:
    """From the capture alone: ``tickers[(instrument, ts ms)] = (merged quote, fields carried, type, cs)``
    (linear: snapshot merged with the deltas since) and ``trades[(instrument, id)] = trade``."""
    tickers, trades, state = {}, {}, {}
    with gzip.open(real / CAPTURE, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] != "recv":
                continue
            category = rec["url"].rsplit("/", 1)[1]
            msg = json.loads(rec["raw"])
            topic = msg.get("topic", "")
            if topic.startswith("tickers."):
                key = (category, topic)
                merged = {**state[key], **msg["data"]} if msg["type"] == "delta" else dict(msg["data"])
                state[key] = merged
                tickers[(m.instrument_name(category, topic[8:]), msg["ts"])] = (
                    merged, list(msg["data"]), msg["type"], msg.get("cs"))
            elif topic.startswith("publicTrade."):
                for t in msg["data"]:
                    trades[(m.instrument_name(category, t["s"]), t["i"])] = t
    return tickers, trades


async def replay(dsn: str, tmp_path: Path, real: Path, *, faults: Faults | None = None,
                 speed: float | str = "max", loop: int = 1, **over) -> tuple[Summary, dict]:
    server = EmulatorServer(EmulatorConfig(capture=real / CAPTURE, venue="bybit", speed=speed, loop=loop,
                                           close_when_done=True, wait_for_clients=2,
                                           faults=faults or Faults()))
    await server.start()
    try:
        settings = load_settings(**{
            "database_url": dsn, "venue": "bybit", "categories": "linear,spot", "linear_symbols": LINEAR,
            "metrics_port": "", "spool_dir": tmp_path / "spool", "backoff_min_s": 0.05,
            "backoff_max_s": 0.3, "flush_interval_s": 0.2, "stats_interval_s": 3600,
            "rest_ban_wait_s": 0.05, **over})
        urls = {c: server.ws_urls[f"/v5/public/{c}"] for c in ("linear", "spot")}
        collector = Collector(settings, ws_url=urls, rest_url=server.rest_url, stop_on_replay_end=True,
                              fresh_universe=True)
        summary = await asyncio.wait_for(collector.run(), 120)
        return summary, server.stats(trade_ids=True)
    finally:
        await server.stop()


def stored_tickers(dsn: str) -> dict:
    cols = ", ".join(f"{c}::text" if c not in ("fields", "other", "cross_seq") else c
                     for c in m.TICKERS.columns)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT {cols}, (extract(epoch FROM exchange_ts) * 1000)::bigint, "
                            "(extract(epoch FROM next_funding_time) * 1000)::bigint FROM bybit_tickers").fetchall()
    out = {}
    for row in rows:
        d = dict(zip(m.TICKERS.columns, row))
        d["ts_ms"], d["next_funding_ms"] = row[-2], row[-1]
        out[(d["instrument_name"], d["ts_ms"])] = d
    return out


def stored_trades(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT instrument_name, trade_id, price::text, amount::text, direction, tick_direction, "
            "block_trade, rpi, cross_seq, (extract(epoch FROM exchange_ts) * 1000)::bigint, source "
            "FROM bybit_trades").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def assert_ticker_row(row: dict, merged: dict, fields: list[str], kind: str, cs: int | None) -> None:
    assert row["fields"] == fields and row["message_type"] == kind and row["cross_seq"] == cs
    for field, column in {**m.TICKER_NUMERIC, **m.TICKER_TEXT}.items():
        if field in merged:
            assert row[column] == (merged[field] or None), (field, row[column], merged[field])
    if "nextFundingTime" in merged:
        assert row["next_funding_ms"] == int(merged["nextFundingTime"])
    extra = {k: v for k, v in merged.items() if k not in m.TICKER_NUMERIC and k not in m.TICKER_TEXT
             and k not in ("symbol", "nextFundingTime")}
    assert row["other"] == (extra or None)


def assert_trade_row(row: tuple, t: dict, source: str) -> None:
    price, amount, direction, tick, bt, rpi, seq, ts, src = row
    assert (price, amount, direction, ts, src) == (t["p"], t["v"], t["S"].lower(), t["T"], source)
    assert bt == t["BT"]
    if source == "ws":
        assert (tick, rpi, seq) == (t.get("L"), t.get("RPI"), t.get("seq"))


def test_replay_stores_what_the_emulator_sent_with_exact_values(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    tickers, trades = capture(real_data_dir)
    sent = stats["totals"]["frames_by_instrument"]
    assert sum(sent["tickers"].values()) == len(tickers) == 839
    assert sum(sent["trades"].values()) == len(trades) == 347
    assert summary.rejected == 0 and summary.rows_written == {
        "connection_events": 6, "bybit_tickers": 839, "bybit_trades": 347}
    got = stored_tickers(migrated_db_url)
    assert Counter(name for name, _ in got) == Counter(sent["tickers"])      # per symbol
    assert set(got) == set(tickers)
    for key, (merged, fields, kind, cs) in tickers.items():
        assert_ticker_row(got[key], merged, fields, kind, cs)
    stored = stored_trades(migrated_db_url)
    assert Counter(name for name, _ in stored) == Counter(sent["trades"])    # per symbol
    assert set(stored) == set(trades)
    for key, t in trades.items():
        assert_trade_row(stored[key], t, "ws")
    # the same capture again: nothing new
    summary2, _ = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    assert summary2.rows_written.get("bybit_trades", 0) == 0 and summary2.rows_duplicate["bybit_trades"] == 347


def test_disconnects_recovered_from_recent_trade(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir,
                                        faults=Faults(seed=5, drop_every=60, drop_count=4), speed=20))
    _, trades = capture(real_data_dir)
    assert stats["totals"]["drops"] == 4 and summary.reconnects == 4 and summary.rejected == 0
    stored = stored_trades(migrated_db_url)
    received = {tuple(k) for c in stats["clients"] for k in c["trade_ids"]}
    assert set(stored) == set(trades)                      # every trade once: stream + REST
    missed = set(trades) - received
    assert missed, "the drops made the stream miss trades"
    for key, t in trades.items():
        # a trade received on a live socket may have been stored first by the recovery of another
        # connection's window (the REST row is the same trade; insert-if-absent keeps one)
        source = "rest" if key in missed or stored[key][-1] == "rest" else "ws"
        assert_trade_row(stored[key], t, source)
    assert sum(1 for key in missed if stored[key][-1] == "rest") == len(missed)
    with psycopg.connect(migrated_db_url) as conn:
        gaps = conn.execute("SELECT stream, instrument_name, status, reason FROM data_gaps "
                            "ORDER BY gap_id").fetchall()
    trade_gaps = [g for g in gaps if g[0] == "trades"]
    assert len(trade_gaps) == 4 and all(g[1] == "*" and g[2] == "backfilled" for g in trade_gaps)
    assert all(g[2] == "unrecoverable" and "no history of ticker data" in g[3]
               for g in gaps if g[0] == "tickers")


def test_window_older_than_recent_trade_reaches_is_unrecoverable(migrated_db_url, tmp_path, real_data_dir):
    """Spot recent-trade serves the latest 60 trades: after 6 loops BTCUSDT-SPOT has 66, so a window
    reaching back before the 60th-latest is recovered only in part and recorded unrecoverable;
    one within the 60 is backfilled."""
    asyncio.run(_partial(migrated_db_url, tmp_path, real_data_dir))


async def _partial(dsn: str, tmp_path: Path, real: Path) -> None:
    venue = get_venue("bybit")
    settings = venue.load_settings(categories="spot", rest_ban_wait_s=0.05)
    server = EmulatorServer(EmulatorConfig(capture=real / CAPTURE, venue="bybit", speed="max", loop=6,
                                           wait_for_clients=0))
    await server.start()
    writer = BatchWriter(dsn)
    await writer.open()
    try:
        await server.finished.wait()
        published = sorted(server.venue.trades[("spot", "BTCUSDT")], key=lambda t: int(t["time"]))
        assert len(published) == 66
        oldest_served = int(published[-60]["time"]) * 1000
        old = Gap("bybit", "trades", "BTCUSDT-SPOT", int(published[0]["time"]) * 1000,
                  int(published[-1]["time"]) * 1000, None, None, "test", GapStatus.OPEN, "test window")
        recent = Gap("bybit", "trades", "BTCUSDT-SPOT", oldest_served + WINDOW_MARGIN_US + 1000,
                     int(published[-1]["time"]) * 1000,
                     None, None, "test", GapStatus.OPEN, "test window")
        conn = await asyncpg.connect(dsn)
        await init_connection(conn)
        ids = [await insert_gap(conn, g) for g in (old, recent)]
        async with venue.rest_client(settings, base_url=server.rest_url) as rest:
            report = await GapRecovery(venue, settings, writer, rest).recover_ids(ids, now_us=oldest_served)
        rows = await conn.fetch("SELECT gap_id, status, reason FROM data_gaps ORDER BY gap_id")
        n = await conn.fetchval("SELECT count(*) FROM bybit_trades WHERE source = 'rest'")
        await conn.close()
    finally:
        await writer.close()
        await server.stop()
    assert [r["status"] for r in rows] == ["unrecoverable", "backfilled"]
    assert "recent-trade returned its maximum" in rows[0]["reason"] and "BTCUSDT (spot)" in rows[0]["reason"]
    assert "60 rows fetched" in rows[0]["reason"]
    assert n == 60 and report.count("unrecoverable") == 1 and report.count("backfilled") == 1


def test_universe_from_instruments_info_and_turnover_ranking(migrated_db_url, real_data_dir):
    """instruments-info (the capture's recorded 800 linear and 557 spot instruments, paged by
    cursor) -> instruments + universe_versions; linear top N by the replayed 24 h turnover."""
    tickers, _ = capture(real_data_dir)
    last = {}
    for (name, ts), (merged, *_rest) in sorted(tickers.items(), key=lambda kv: kv[0][1]):
        last[name] = merged
    linear = [n for n in last if not n.endswith("-SPOT")]
    by_turnover = sorted(linear, key=lambda n: (-float(last[n]["turnover24h"]), n))

    async def scenario():
        from collector_daemon.core.universe import refresh_universe
        venue = get_venue("bybit")
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit",
                                               speed="max", wait_for_clients=0))
        await server.start()
        try:
            await server.finished.wait()
            out = {}
            for group, over in (("linear", {"linear_symbols": "SOLUSDT,NOPEUSDT,DOGEUSDT"}), ("spot", {}),
                                ("linear", {"linear_top_n": 2})):
                settings = venue.load_settings(categories="linear,spot", rest_url=server.rest_url, **over)
                async with venue.rest_client(settings) as rest:
                    out[(group, tuple(over))] = await refresh_universe(migrated_db_url, venue, settings, rest, group)
            return out
        finally:
            await server.stop()

    out = asyncio.run(scenario())
    by_symbols, spot, top2 = out.values()
    assert by_symbols.selected == ["SOLUSDT", "DOGEUSDT"] and by_symbols.instruments == 800
    assert spot.selected == ["BTCUSDT-SPOT", "ETHUSDT-SPOT"] and spot.instruments == 557
    assert top2.selected == by_turnover[:2] and top2.changed and top2.removed == ["DOGEUSDT", "SOLUSDT"]
    with psycopg.connect(migrated_db_url) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM instruments WHERE venue = 'bybit' "
                                  "AND is_active GROUP BY kind").fetchall())
        btc = conn.execute("SELECT kind, base_currency, quote_currency, tick_size, min_trade_amount "
                           "FROM instruments WHERE instrument_name = 'BTCUSDT'").fetchone()
        versions = conn.execute("SELECT currency, subscribed, kinds FROM universe_versions "
                                "ORDER BY version").fetchall()
    assert kinds["spot"] == 557 and kinds.get("perpetual", 0) + kinds.get("future", 0) == 800
    assert btc == ("perpetual", "BTC", "USDT", 0.1, 0.001)
    assert versions == [("linear", ["SOLUSDT", "DOGEUSDT"], ["linear", "spot"]),
                        ("spot", ["BTCUSDT-SPOT", "ETHUSDT-SPOT"], ["linear", "spot"]),
                        ("linear", by_turnover[:2], ["linear", "spot"])]
