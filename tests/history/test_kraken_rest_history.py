"""``tickvault history kraken-trades``: REST Trades paged by cursor into ``trades``, resumable.
A real crash (SIGKILL of the command in the middle of a run) resumes from the cursor stored in
``sync_state`` with no duplicate and no hole; invalid rows land in ``rejected_messages`` with the
reason; a re-run is a no-op. The emulator serves the 1,000 real trades of Nautilus'
http_trades.json in pages of 100, with Kraken's rate-limit errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import psycopg

from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer

SOURCE = "kraken/nautilus_test_data/http_trades.json"
PAIR = "BTC/USDT"
#: invalid rows slipped into the served pages: (index to insert before, row, reason expected)
BAD = [(150, ["105000.0", "-0.5", None, "b", "l", "", 99_000_001], "volume"),
       (450, ["nan", "0.1", None, "s", "m", "", 99_000_002], "price"),
       (820, ["105000.0", "0.1", 946684800.0, "x", "m", "", 99_000_003], "side")]


async def _server(real: Path, rest_errors: float | None) -> EmulatorServer:
    server = EmulatorServer(EmulatorConfig(capture=real / SOURCE, venue="kraken", wait_for_clients=0,
                                           close_when_done=True,
                                           faults=Faults(seed=4, rest_errors=rest_errors)))
    server.venue.trades_page = 100
    await server.start()
    await server.finished.wait()
    trades, times = server.venue.trades[PAIR], server.venue._trade_ns[PAIR]
    for index, row, _ in reversed(BAD):
        ns = times[index]
        trades.insert(index, (ns, [*row[:2], row[2] if row[2] is not None else ns / 1e9, *row[3:]]))
        times.insert(index, ns)
    return server


async def _cli(dsn: str, rest_url: str, *args: str, interval: float = 0.0,
               kill_after_pages: int | None = None) -> tuple[int, str]:
    env = {**os.environ, "TICKVAULT_DATABASE_URL": dsn, "TICKVAULT_KRAKEN_REST_URL": rest_url,
           "TICKVAULT_KRAKEN_REST_PAIR_INTERVAL_S": str(interval)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector_daemon.cli", "history", "kraken-trades", "--pair", PAIR, *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if kill_after_pages is not None:
        while (await asyncio.to_thread(_pages, dsn)) < kill_after_pages:
            assert proc.returncode is None, "the run ended before it could be killed"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)   # a crash: no cleanup, a page may be in flight
    out, err = await proc.communicate()
    return proc.returncode, out.decode() + err.decode()


def _pages(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pages FROM sync_state WHERE venue = 'kraken' AND instrument_name = %s",
                           (PAIR,)).fetchone()
    return row[0] if row else 0


def _stored(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT trade_seq, price, amount, direction, ord_type, source, "
                            "(extract(epoch FROM exchange_ts) * 1e6)::bigint FROM trades "
                            "WHERE venue = 'kraken' AND instrument_name = %s ORDER BY trade_seq",
                            (PAIR,)).fetchall()


def test_crash_mid_run_resumes_without_duplicate_or_hole(migrated_db_url, real_data_dir):
    real = json.loads((real_data_dir / SOURCE).read_text())["result"]["XBTUSDT"]

    async def scenario():
        server = await _server(real_data_dir, rest_errors=0.2)
        try:
            killed = await _cli(migrated_db_url, server.rest_url, "--since", "0", interval=0.3,
                                kill_after_pages=4)
            partial = _stored(migrated_db_url)
            with psycopg.connect(migrated_db_url) as conn:
                done = conn.execute("SELECT done FROM sync_state").fetchone()[0]
            resumed = await _cli(migrated_db_url, server.rest_url, "--since", "0")
            again = await _cli(migrated_db_url, server.rest_url, "--since", "0")
            return killed, partial, done, resumed, again
        finally:
            await server.stop()

    killed, partial, done, (rc, resumed), (rc2, again) = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert killed[0] == -signal.SIGKILL and not done
    assert 300 <= len(partial) < 1000                  # at least the 4 committed pages, not all
    assert [r[0] for r in partial] == list(range(10218208, 10218208 + len(partial)))   # no hole
    assert rc == 0 and "resumed at cursor" in resumed and "(complete)" in resumed, resumed
    stored = _stored(migrated_db_url)
    # every real trade exactly once (the natural key and the cursor), with exact values
    assert [r[0] for r in stored] == [r[6] for r in real]
    for got, r in zip(stored, real):
        assert got[1:] == (float(r[0]), float(r[1]), {"b": "buy", "s": "sell"}[r[3]],
                           {"l": "limit", "m": "market"}[r[4]], "rest", round(r[2] * 1e6))
    with psycopg.connect(migrated_db_url) as conn:
        rejected = conn.execute("SELECT reason, raw FROM rejected_messages WHERE venue = 'kraken' "
                                "AND connection_id = 'rest-history' ORDER BY rejected_id").fetchall()
        state = conn.execute("SELECT done, rows_rejected FROM sync_state").fetchone()
    # each invalid row once: rejects commit with their page and cursor
    assert len(rejected) == 3, rejected
    reasons = {json.loads(raw)[6]: reason for reason, raw in rejected}
    assert sorted(reasons) == [99_000_001, 99_000_002, 99_000_003]
    for _, row, why in BAD:
        assert why in reasons[row[6]], reasons
    assert state[0] is True
    # a re-run: starts at the stored cursor, inserts nothing
    assert rc2 == 0 and " 0 inserted" in again and "resumed at cursor" in again, again


def test_a_trade_the_stream_stored_a_microsecond_apart_is_not_stored_again(migrated_db_url, real_data_dir):
    """REST's time is float seconds: the same trade from the stream may carry another µs (another
    natural key). The sync decides by trade id."""
    from tickvault.history.kraken_rest import sync_trades
    real = json.loads((real_data_dir / SOURCE).read_text())["result"]["XBTUSDT"]
    t = real[100]
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO trades (venue, instrument_name, trade_id, trade_seq, exchange_ts, receive_ts, "
                     "price, amount, direction, source, ord_type) VALUES ('kraken', %s, %s, %s, "
                     "to_timestamp(%s / 1e6), now(), %s, %s, 'buy', 'ws', 'limit')",
                     (PAIR, str(t[6]), t[6], round(t[2] * 1e6) + 1, float(t[0]), float(t[1])))

    async def scenario():
        server = await _server(real_data_dir, rest_errors=None)
        try:
            return await sync_trades(migrated_db_url, PAIR, since_ns=0, rest_url=server.rest_url,
                                     pair_interval_s=0)
        finally:
            await server.stop()

    summary = asyncio.run(asyncio.wait_for(scenario(), 60))
    stored = _stored(migrated_db_url)
    assert [r[0] for r in stored] == [r[6] for r in real]            # once each
    assert [r[5] for r in stored if r[0] == t[6]] == ["ws"] and summary.inserted == 999
    assert summary.rejected == 3 and summary.done
