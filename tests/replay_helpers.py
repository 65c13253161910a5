"""Shared helpers of the end-to-end and fault tests: run the emulator and the collector in one
event loop over real loopback WebSockets, and read back what landed."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import psycopg

from collector_daemon.daemon import Collector, Summary
from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.rows import QUOTES
from collector_daemon.settings import Settings, load_settings

CAPTURE = "deribit/cryptofeed_2021-04-05_options_ticker_book_ws.jsonl.gz"
TRADES_CSV = "deribit/cyri113_2026-08-17_btc_perpetual+0dte_options_trades_from_sqlite_wal.csv.gz"
QUOTE_VALUE_COLUMNS = [c for c in QUOTES.columns if c not in ("venue", "receive_ts")]
GREEKS = ("delta", "gamma", "vega", "theta", "rho")


def capture_tickers(path: Path, currency: str) -> dict[tuple[str, int], dict]:
    """(instrument_name, exchange ms) -> ticker data of the first frame with that key."""
    out: dict[tuple[str, int], dict] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] != "recv":
                continue
            msg = json.loads(rec["raw"])
            channel = msg.get("params", {}).get("channel", "")
            if channel.startswith(f"ticker.{currency}-"):
                data = msg["params"]["data"]
                out.setdefault((data["instrument_name"], data["timestamp"]), data)
    return out


def settings_for(dsn: str, tmp_path: Path, **over) -> Settings:
    """Collector settings for a test: fast backoff and flushes, no metrics port."""
    base = dict(database_url=dsn, top_n="all", currency="ETH", metrics_port="", spool_dir=tmp_path / "spool",
                backoff_min_s=0.05, backoff_max_s=0.5, flush_interval_s=0.2, stats_interval_s=3600)
    base.update(over)
    return load_settings(**base)


async def replay(dsn: str, tmp_path: Path, real: Path, *, trades: Path | None = None,
                 faults: Faults | None = None, speed: float | str = "max", loop: int = 1,
                 align_trades: bool = False, history_host: bool = False,
                 **settings) -> tuple[Summary, dict]:
    """Replay the 2021-04-05 capture (and ``trades``) through the emulator into ``dsn``; returns
    the collector's summary and the emulator's stats (with trade ids). ``history_host``: the
    emulator's REST also stands in for history.deribit.com (windows older than 24 h)."""
    server = EmulatorServer(EmulatorConfig(capture=real / CAPTURE, trades=trades, speed=speed,
                                           loop=loop, align_trades=align_trades,
                                           close_when_done=True, faults=faults or Faults()))
    await server.start(host="127.0.0.1", port=0)
    try:
        if history_host:
            settings["deribit_history_url"] = server.rest_url
        collector = Collector(settings_for(dsn, tmp_path, **settings), ws_url=server.ws_url,
                              rest_url=server.rest_url, stop_on_replay_end=True)
        summary = await asyncio.wait_for(collector.run(), 120)
        return summary, server.stats(trade_ids=True)
    finally:
        await server.stop()


def db_quotes(dsn: str) -> dict[tuple[str, int], dict]:
    cols = ", ".join(c if c not in ("exchange_ts", "receive_ts") else
                     f"(extract(epoch FROM {c}) * 1e6)::bigint" for c in QUOTES.columns)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT {cols} FROM quotes").fetchall()
    out = {}
    for row in rows:
        d = dict(zip(QUOTES.columns, row))
        out[(d["instrument_name"], d["exchange_ts"] // 1000)] = d
    return out


def assert_quote_equals_frame(row: dict, data: dict) -> None:
    for col in QUOTE_VALUE_COLUMNS:
        if col == "exchange_ts":
            assert row[col] == data["timestamp"] * 1000
        elif col in GREEKS:
            assert row[col] == (data.get("greeks") or {}).get(col), col
        else:
            assert row[col] == data.get(col), col


