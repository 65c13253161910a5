"""Test data for the orchestration tests, built from the real captures through the collector's
own decoders (``DeribitProtocol.decode`` for capture frames, ``messages.trades_decoder`` for
trades) and written with the collector's ``BatchWriter``: the normalisation path of production.

Derived streams (gaps, shifts) are made by removing or time-shifting decoded rows in code.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from collector_daemon.rows import CONNECTION_EVENTS, QUOTES, TRADES, TableSpec
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues import Data
from collector_daemon.venues.deribit import messages as m
from collector_daemon.venues.deribit.protocol import DeribitProtocol

DERIBIT = "deribit"
CAPTURE_0405 = "cryptofeed_2021-04-05_options_ticker_book_ws.jsonl.gz"
CAPTURE_0722 = "cryptofeed_2021-07-22_options_ticker_book_ws+get_instruments.jsonl.gz"
CYRI113_CSV = "cyri113_2026-08-17_btc_perpetual+0dte_options_trades_from_sqlite_wal.csv.gz"

#: Test days (UTC midnight).
D0405, D0406 = datetime(2021, 4, 5, tzinfo=UTC), datetime(2021, 4, 6, tzinfo=UTC)
D0816 = datetime(2026, 8, 16, tzinfo=UTC)
D0817, D0818 = datetime(2026, 8, 17, tzinfo=UTC), datetime(2026, 8, 18, tzinfo=UTC)
#: The instrument whose quotes get a 85 s hole in ``quotes_day``.
SILENT = "ETH-9APR21-1950-C"

# Column positions in the row tuples (collector_daemon.rows).
Q_INSTR, Q_TS = QUOTES.columns.index("instrument_name"), QUOTES.columns.index("exchange_ts")
T_INSTR, T_ID = TRADES.columns.index("instrument_name"), TRADES.columns.index("trade_id")
T_SEQ, T_TS = TRADES.columns.index("trade_seq"), TRADES.columns.index("exchange_ts")
T_PRICE, T_AMOUNT = TRADES.columns.index("price"), TRADES.columns.index("amount")
T_SOURCE = TRADES.columns.index("source")


def us(dt: datetime) -> int:
    """Aware datetime -> µs since epoch."""
    return int(dt.timestamp() * 1_000_000)


def dt_us(value: int) -> datetime:
    """µs since epoch -> aware UTC datetime (exact)."""
    from datetime import timedelta
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


def capture_quote_rows(path: Path) -> list[tuple]:
    """``quotes`` rows of every ticker notification of a cryptofeed capture, decoded by the
    collector's protocol (receive time = the capture's ``ts``)."""
    proto = DeribitProtocol("ETH")
    rows: list[tuple] = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec.get("dir") != "recv" or not rec.get("raw"):
                continue
            if '"ticker.' not in rec["raw"]:
                continue
            out = proto.decode(rec["raw"], int(rec["ts"] * 1_000_000))
            if isinstance(out, Data) and out.table is QUOTES:
                rows += out.rows
    return rows


def cyri113_trades(path: Path) -> list[m.Trade]:
    """The cyri113 trades as ``messages.Trade`` with ``trade_seq`` derived the way the emulator
    documents it (per instrument 1, 2, 3, ... in (timestamp, numeric trade id) order)."""
    with gzip.open(path, "rt") as fh:
        raw = list(csv.DictReader(fh))
    dicts = []
    for r in raw:
        d = {"trade_id": r["id"], "instrument_name": r["instrument_name"],
             "timestamp": int(r["timestamp"]), "price": float(r["price"]),
             "amount": float(r["amount"]), "direction": r["direction"]}
        for src, dst in (("index_price", "index_price"), ("mark_price", "mark_price"),
                         ("implied_volatility", "iv")):
            if (r.get(src) or "").strip():
                d[dst] = float(r[src])
        dicts.append(d)
    dicts.sort(key=lambda d: (d["timestamp"], int(d["trade_id"])))
    seq: dict[str, int] = {}
    for d in dicts:
        seq[d["instrument_name"]] = seq.get(d["instrument_name"], 0) + 1
        d["trade_seq"] = seq[d["instrument_name"]]
    return m.trades_decoder.decode(msgspec.json.encode(dicts))


def trade_rows(trades: Iterable[m.Trade], source: str = "ws", receive_lag_us: int = 5_000) -> list[tuple]:
    """``trades`` rows through ``Trade.to_row`` (receive time = exchange time + a small lag)."""
    return [t.to_row(t.timestamp * 1000 + receive_lag_us, source) for t in trades]


def connection_event(connection_id: str, event: str, ts: datetime, *, channels=None,
                     window: tuple[datetime, datetime] | None = None, reason=None) -> tuple:
    """A ``connection_events`` row (``rows.CONNECTION_EVENTS`` order)."""
    ws, we = window if window else (None, None)
    return (DERIBIT, connection_id, event, us(ts), channels, None, reason,
            None if ws is None else us(ws), None if we is None else us(we))


def write(dsn: str, table: TableSpec, rows: list[tuple]) -> int:
    """Write rows with the collector's BatchWriter; returns rows inserted."""
    async def go() -> int:
        writer = BatchWriter(dsn, venue=DERIBIT)
        await writer.open()
        try:
            n = 0
            for i in range(0, len(rows), 5000):
                n += await writer.write(table, rows[i:i + 5000])
            return n
        finally:
            await writer.close()
    return asyncio.run(go()) if rows else 0


def write_events(dsn: str, rows: list[tuple]) -> int:
    """Write connection_events rows."""
    return write(dsn, CONNECTION_EVENTS, rows)


@dataclass
class Emulator:
    """A running ``EmulatorServer`` on its own event loop thread (REST for sync tests)."""

    rest_url: str
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _server: object

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def start_emulator(capture: Path, trades: Path | None = None) -> Emulator:
    """Start the emulator replaying ``capture`` (+ ``trades``) at max speed without waiting for a
    client, and return once the whole timeline is published (so REST serves every trade)."""
    from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()

    async def boot():
        server = EmulatorServer(EmulatorConfig(capture=capture, trades=trades, speed="max",
                                               loop=1, close_when_done=False, wait_for_clients=0))
        await server.start(host="127.0.0.1", port=0)
        await asyncio.wait_for(server.finished.wait(), 60)
        return server

    server = asyncio.run_coroutine_threadsafe(boot(), loop).result(90)
    return Emulator(server.rest_url, loop, thread, server)
