"""Several connections per daemon, failover, and several daemons over one database (real
WebSockets on loopback, real TimescaleDB, the 2021-04-05 capture)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from collector_daemon.daemon import Collector
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from replay_helpers import CAPTURE, capture_tickers, db_quotes, settings_for

pytestmark = pytest.mark.realdata


def _ticker_names(channels) -> set[str]:
    return {c.split(".")[1] for c in channels if c.startswith("ticker.")}


def test_channels_spread_over_connections_and_one_lost_connection_disturbs_no_other(
        migrated_db_url, tmp_path, real_data_dir):
    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, speed=6, close_when_done=True))
        await server.start(host="127.0.0.1", port=0)
        collector = Collector(settings_for(migrated_db_url, tmp_path, channels_per_connection=3,
                                           failover_s=1.0), ws_url=server.ws_url,
                              rest_url=server.rest_url, stop_on_replay_end=True)
        run = asyncio.create_task(collector.run())
        while len(collector.connections) < 3 or sum(len(c.subscribed) for c in collector.connections) < 8:
            await asyncio.sleep(0.05)
        before = [set(c.subscribed) for c in collector.connections]
        await asyncio.sleep(3)
        victim = collector.connections[1]
        victim.url = "ws://127.0.0.1:9/nothing-listens-here"       # it cannot come back ...
        port = victim._ws.local_address[1]                         # ... after losing its socket
        next(c for c in server.replayer.clients if c.ws.remote_address[1] == port).transport.abort()
        for _ in range(100):                                       # failover_s = 1 s
            moved = set().union(*(c.subscribed for i, c in enumerate(collector.connections) if i != 1))
            if before[1] <= moved:
                break
            await asyncio.sleep(0.1)
        after = [set(c.subscribed) for c in collector.connections]
        summary = await run
        stats = server.stats()
        await server.stop()
        return before, after, summary, stats

    before, after, summary, stats = asyncio.run(scenario())
    assert [len(b) for b in before] and sum(len(b) for b in before) == 8 and len(before) == 3
    assert all(before) and set().union(*before) == {"trades.option.ETH.100ms"} | {
        f"ticker.{n}.100ms" for n in _ticker_names(set().union(*before))}
    # the survivors kept what they had and took over the victim's channels
    assert before[0] <= after[0] and before[2] <= after[2]
    assert before[1] <= after[0] | after[2]
    # every ticker any connection was sent is stored once; nothing else was interrupted
    sent = sum(stats["totals"]["frames_by_instrument"]["ticker"].values())
    assert summary.rows_written["quotes"] == sent == len(db_quotes(migrated_db_url))
    per_client = {c["id"]: c for c in stats["clients"]}
    survivors = [c for c in per_client.values() if c["drops"] == 0 and c["close_reason"] == "replay finished"]
    assert len(survivors) >= 2


def test_overlapping_daemons_store_everything_once(migrated_db_url, tmp_path, real_data_dir):
    """Daemon A owns the whole universe, daemons B and C shards 1/2 and 2/2: every instrument is
    collected twice, the database keeps each row once and misses none."""
    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, speed="max",
                                               close_when_done=True, wait_for_clients=3))
        await server.start(host="127.0.0.1", port=0)
        daemons = [Collector(settings_for(migrated_db_url, tmp_path, shard=shard, collector_id=f"d{i}"),
                             ws_url=server.ws_url, rest_url=server.rest_url, stop_on_replay_end=True)
                   for i, shard in enumerate(["1/1", "1/2", "2/2"])]
        summaries = await asyncio.gather(*(d.run() for d in daemons))
        selected = [set(d.selected) for d in daemons]
        await server.stop()
        return summaries, selected

    summaries, selected = asyncio.run(scenario())
    assert selected[1] and selected[2] and not selected[1] & selected[2]
    assert selected[1] | selected[2] == selected[0]
    expected = capture_tickers(real_data_dir / CAPTURE, "ETH")
    stored = db_quotes(migrated_db_url)
    assert set(stored) == set(expected)                                  # nothing missing
    written = sum(s.rows_written["quotes"] for s in summaries)
    duplicates = sum(s.rows_duplicate.get("quotes", 0) for s in summaries)
    assert written == len(expected) and duplicates == len(expected)     # each row landed once
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM collector_status").fetchone()[0] == 3


def test_subscriptions_follow_universe_churn(migrated_db_url, tmp_path, real_data_dir):
    """The emulator lists fan-out copies only during staggered windows of the replay (new strikes
    appearing, instruments expiring). The collector subscribes and unsubscribes them within one
    refresh interval (+ slack), and the instruments that stay listed are never interrupted."""
    speed, refresh_s = 8.0, 1.0

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, speed=speed, fanout=4,
                                               churn=True, close_when_done=True))
        await server.start(host="127.0.0.1", port=0)
        collector = Collector(settings_for(migrated_db_url, tmp_path, universe_refresh_s=refresh_s,
                                           universe_stale_s=refresh_s / 2),
                              ws_url=server.ws_url, rest_url=server.rest_url, stop_on_replay_end=True)
        summary = await collector.run()
        stats = server.stats()
        windows = server.venue.listing_windows()
        await server.stop()
        return summary, stats, windows

    summary, stats, windows = asyncio.run(scenario())
    with psycopg.connect(migrated_db_url) as conn:
        events = conn.execute(
            "SELECT event, (extract(epoch FROM event_ts) * 1000)::bigint, channels FROM connection_events "
            "WHERE event IN ('subscribed', 'unsubscribed') ORDER BY event_id").fetchall()
    first_sub = {}
    unsub = {}
    for event, ts, channels in events:
        for ch in channels or []:
            name = ch.split(".")[1] if ch.startswith("ticker.") else None
            if name and event == "subscribed":
                first_sub.setdefault(name, ts)
            elif name:
                unsub.setdefault(name, ts)
    eth_windows = {n: w for n, w in windows.items() if n.startswith("ETH-")}
    assert len(eth_windows) == 21
    start_ms = min(first_sub.values())            # the replay starts once the first set is subscribed
    t0 = min(w[0] for w in eth_windows.values())
    slack_ms = (refresh_s + 2.0) * 1000
    late = expired = 0
    for name, (listed, delisted) in eth_windows.items():
        appears = start_ms + (listed - t0) / speed
        if listed > t0:                               # listed later: picked up within a refresh
            assert name in first_sub and 0 <= first_sub[name] - appears + 500 <= slack_ms, name
            late += 1
        expires = start_ms + (delisted - t0) / speed
        if delisted < max(w[1] for w in eth_windows.values()):   # expired before the end
            assert name in unsub and 0 <= unsub[name] - expires + 500 <= slack_ms, name
            expired += 1
    assert late >= 14 and expired >= 7
    # the original 7 instruments: every frame the emulator sent is stored, no reconnect
    sent = stats["totals"]["frames_by_instrument"]["ticker"]
    originals = {name for name, _ in capture_tickers(real_data_dir / CAPTURE, "ETH")}
    stored = db_quotes(migrated_db_url)
    for name in originals:
        assert sum(1 for (n, _) in stored if n == name) == sent[name]
    assert summary.reconnects == 0
