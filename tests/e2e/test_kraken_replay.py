"""Kraken end to end over loopback: the emulator replays the real REST trades (Nautilus'
http_trades.json: 1,000 XBTUSDT trades) and one-minute candles (http_ohlc.json) as WS v2 frames;
the collector stores them into TimescaleDB. Every trade once with exact values; a hole in the
trade ids recovered from REST Trades with its exact bounds; disconnect windows recovered."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import psycopg
import pytest

from collector_daemon.daemon import Collector, Summary
from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.settings import load_settings

SOURCE = "kraken/nautilus_test_data/http_trades.json"
SYMBOL = "BTC/USDT"


def real_trades(real: Path) -> dict[int, list]:
    rows = json.loads((real / SOURCE).read_text())["result"]["XBTUSDT"]
    return {r[6]: r for r in rows}


def real_candles(real: Path) -> list[list]:
    return json.loads((real / "kraken/nautilus_test_data/http_ohlc.json").read_text())["result"]["XBTUSDT"]


async def replay(dsn: str, tmp_path: Path, real: Path, *, faults: Faults | None = None,
                 withheld: set[int] = frozenset(), status: str = "online",
                 speed: float | str = "max", **over) -> tuple[Summary, dict]:
    server = EmulatorServer(EmulatorConfig(capture=real / SOURCE, venue="kraken", close_when_done=True, speed=speed,
                                           wait_for_clients=1, faults=faults or Faults()))
    server.venue.withheld = {(SYMBOL, i) for i in withheld}
    server.venue.system_status = status
    await server.start()
    try:
        settings = load_settings(**{
            "database_url": dsn, "venue": "kraken", "pairs": SYMBOL, "ohlc_intervals": "1",
            "rest_pair_interval_s": 0, "metrics_port": "", "spool_dir": tmp_path / "spool",
            "backoff_min_s": 0.05, "backoff_max_s": 0.3, "flush_interval_s": 0.2,
            "stats_interval_s": 3600, **over})
        collector = Collector(settings, ws_url=server.ws_url, rest_url=server.rest_url,
                              stop_on_replay_end=True, fresh_universe=True)
        summary = await asyncio.wait_for(collector.run(), 120)
        return summary, server.stats(trade_ids=True)
    finally:
        await server.stop()


def stored_trades(dsn: str) -> dict[int, tuple]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT trade_seq, trade_id, price, amount, direction, ord_type, "
            "(extract(epoch FROM exchange_ts) * 1e6)::bigint, source, instrument_name FROM trades "
            "WHERE venue = 'kraken'").fetchall()
    out = {}
    for r in rows:
        assert r[0] not in out, f"trade {r[0]} stored twice"
        out[r[0]] = r[1:]
    return out


def assert_exact(stored: dict[int, tuple], real: dict[int, list], sources: dict[int, str]) -> None:
    assert set(stored) == set(real)
    for tid, r in real.items():
        trade_id, price, amount, direction, ord_type, ts_us, source, name = stored[tid]
        assert (trade_id, price, amount, direction, ord_type, ts_us, name) == (
            str(tid), float(r[0]), float(r[1]), {"b": "buy", "s": "sell"}[r[3]],
            {"l": "limit", "m": "market"}[r[4]], round(r[2] * 1e6), SYMBOL), tid
        assert source == sources.get(tid, "ws"), tid


def test_ws_replay_stores_every_trade_once_with_exact_values(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    real = real_trades(real_data_dir)
    assert len(real) == 1000 and summary.rejected == 0
    sent = stats["totals"]["frames_by_instrument"]
    assert sent["trades"] == {SYMBOL: 1000}
    assert_exact(stored_trades(migrated_db_url), real, {})
    with psycopg.connect(migrated_db_url) as conn:
        candles = conn.execute(
            "SELECT (extract(epoch FROM interval_begin))::bigint, open, high, low, close, vwap, volume, "
            "trade_count, closed FROM exchange_candles WHERE venue = 'kraken' AND instrument_name = %s "
            "AND interval_minutes = 1 ORDER BY interval_begin", (SYMBOL,)).fetchall()
        events = conn.execute("SELECT event, reason FROM connection_events WHERE event = 'status'").fetchall()
        gaps = conn.execute("SELECT count(*) FROM data_gaps").fetchone()[0]
    expected = real_candles(real_data_dir)
    assert [c[:8] for c in candles] == [
        (c[0], float(c[1]), float(c[2]), float(c[3]), float(c[4]), float(c[5]) if c[7] else None,
         float(c[6]), c[7])
        for c in expected]
    # every candle but the newest is closed (a later one arrived); the newest stays open
    assert [c[8] for c in candles] == [True] * 720 + [False]
    assert events == [("status", "online")] and gaps == 0
    # the same replay again: nothing new, nothing changed
    summary2, _ = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir))
    assert summary2.rows_written.get("trades", 0) == 0 and summary2.rows_duplicate["trades"] == 1000
    assert_exact(stored_trades(migrated_db_url), real, {})


def test_trade_id_hole_recovered_with_exact_bounds(migrated_db_url, tmp_path, real_data_dir):
    hole = set(range(10218500, 10218510))
    summary, _ = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir, withheld=hole))
    real = real_trades(real_data_dir)
    assert_exact(stored_trades(migrated_db_url), real, {i: "rest" for i in hole})
    with psycopg.connect(migrated_db_url) as conn:
        gaps = conn.execute(
            "SELECT stream, instrument_name, seq_from, seq_to, detected_by, status, "
            "(extract(epoch FROM gap_start) * 1e6)::bigint, (extract(epoch FROM gap_end) * 1e6)::bigint "
            "FROM data_gaps").fetchall()
    assert gaps == [("trades", SYMBOL, 10218500, 10218509, "trade_seq", "backfilled",
                     round(real[10218499][2] * 1e6), round(real[10218510][2] * 1e6))]


def test_disconnects_recovered_by_cursor(migrated_db_url, tmp_path, real_data_dir):
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir,
                                        faults=Faults(seed=3, drop_every=400, drop_count=2),
                                        speed=20_000))
    assert stats["totals"]["drops"] == summary.reconnects >= 2
    real = real_trades(real_data_dir)
    stored = stored_trades(migrated_db_url)
    received = {int(t) for c in stats["clients"] for _, t in c["trade_ids"]}
    missed = set(real) - received
    assert missed, "the drops made the stream miss trades"
    assert_exact(stored, real, {i: stored[i][6] for i in real})    # exact values, once each
    assert all(stored[i][6] == "rest" for i in missed)
    with psycopg.connect(migrated_db_url) as conn:
        statuses = conn.execute("SELECT status FROM data_gaps WHERE stream = 'trades'").fetchall()
    assert statuses and all(s == ("backfilled",) for s in statuses)


@pytest.mark.parametrize("status", ["maintenance"])
def test_status_recorded(migrated_db_url, tmp_path, real_data_dir, status):
    asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir, status=status))
    with psycopg.connect(migrated_db_url) as conn:
        events = conn.execute("SELECT reason FROM connection_events WHERE event = 'status'").fetchall()
    assert events == [(status,)]


def test_start_syncs_from_the_last_stored_trade(migrated_db_url, tmp_path, real_data_dir):
    """Run 1 ends with trade 10218400 stored; the collector is down while trades up to 10218700
    happen (run 2's stream starts at 10218701): at start it is seeded with the last stored trade id
    of the pair (whatever its age), so the first live trade opens the exact gap, fetched by cursor."""
    real = real_trades(real_data_dir)
    asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir, withheld=set(range(10218401, 10219300))))
    assert max(stored_trades(migrated_db_url)) == 10218400
    asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir, withheld=set(range(10218000, 10218701))))
    assert_exact(stored_trades(migrated_db_url), real, {i: "rest" for i in range(10218401, 10218701)})
    with psycopg.connect(migrated_db_url) as conn:
        gaps = conn.execute("SELECT instrument_name, seq_from, seq_to, status FROM data_gaps").fetchall()
    assert gaps == [(SYMBOL, 10218401, 10218700, "backfilled")]


def test_maintenance_paces_reconnects_and_malformed_frames_are_kept(migrated_db_url, tmp_path, real_data_dir):
    """While the venue announces maintenance, a reconnect waits at least 5 s (the backoff here is
    0.05-0.3 s); malformed frames injected by the emulator are kept in rejected_messages and
    every trade is still stored once (stream + REST)."""
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir, status="maintenance",
                                        faults=Faults(seed=7, drop_every=500, drop_count=1, malformed=6),
                                        speed=5_000))
    assert stats["totals"]["drops"] == summary.reconnects == 1
    with psycopg.connect(migrated_db_url) as conn:
        events = conn.execute("SELECT event, extract(epoch FROM event_ts)::float8 FROM connection_events "
                              "WHERE event IN ('connect', 'disconnect') ORDER BY event_id").fetchall()
        rejected = conn.execute("SELECT count(*) FROM rejected_messages WHERE venue = 'kraken'").fetchone()[0]
    kinds = [e for e, _ in events]
    down = kinds.index("disconnect")
    assert kinds[down + 1] == "connect" and events[down + 1][1] - events[down][1] >= 5.0, events
    # (positions played while the socket was down reach nobody)
    assert rejected == summary.rejected == stats["totals"]["malformed_sent"] >= 1
    assert set(stored_trades(migrated_db_url)) == set(real_trades(real_data_dir))


def test_disconnect_candles_refetched_from_rest_ohlc(migrated_db_url, tmp_path, real_data_dir):
    """The emulator drops the WebSocket once while trades and one-minute candles stream: the
    ``ohlc`` updates sent while it was down reach nobody. The disconnect window's recovery
    refetches the candles from REST OHLC, so exchange_candles has every real candle once, with
    REST's values, closed (all but the newest), and those of the window come from REST."""
    summary, stats = asyncio.run(replay(migrated_db_url, tmp_path, real_data_dir,
                                        faults=Faults(seed=5, drop_every=500, drop_count=1),
                                        speed=20_000))
    assert stats["totals"]["drops"] == summary.reconnects == 1
    with psycopg.connect(migrated_db_url) as conn:
        candles = conn.execute(
            "SELECT (extract(epoch FROM interval_begin))::bigint, open, high, low, close, vwap, volume, "
            "trade_count, closed, source FROM exchange_candles WHERE venue = 'kraken' "
            "AND instrument_name = %s AND interval_minutes = 1 ORDER BY interval_begin", (SYMBOL,)).fetchall()
        window = conn.execute(
            "SELECT extract(epoch FROM gap_start)::float8, extract(epoch FROM gap_end)::float8, status, "
            "reason FROM data_gaps WHERE detected_by = 'disconnect'").fetchall()
    expected = real_candles(real_data_dir)
    assert [c[:8] for c in candles] == [
        (c[0], float(c[1]), float(c[2]), float(c[3]), float(c[4]), float(c[5]) if c[7] else None,
         float(c[6]), c[7])
        for c in expected]
    assert [c[8] for c in candles] == [True] * 720 + [False]
    assert len(window) == 1 and window[0][2] == "backfilled", window
    start, end, _, reason = window[0]
    first = int(start) // 60 * 60 - 60      # the candle before the one holding the window's start
    from_rest = [c[0] for c in candles if c[9] == "rest"]
    assert len(from_rest) >= 2, "the drop made the stream miss candles, refetched from REST"
    assert all(b >= first for b in from_rest), (start, end, from_rest)
    # REST served the closed candles from `first` to the call (its newest, open, left to the
    # stream): as many as the real ones from `first` up to a candle after the window's end
    fetched, written = map(int, re.search(r"exchange_candles: (\d+) fetched, (\d+) written", reason).groups())
    newest = first + 60 * (fetched - 1)
    assert newest >= end - 60 and written >= len(from_rest)
    assert fetched == len([c for c in expected if first <= c[0] <= newest])
