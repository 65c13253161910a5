"""The project's seed design, rebuilt from its description for benchmarks/peers.py: the yardstick
tickvault is measured against (issue 14).

What the seed's ``ws_tick_collector`` + ``tick_writer`` did, and this does, nothing more:

* one WebSocket (the ``websockets`` library), Deribit JSON-RPC ``public/subscribe`` of
  ``ticker.{instrument}.100ms`` for every option of the currency (from ``public/get_instruments``),
  in requests of at most 500 channels (Deribit's 32 kB request limit);
* ``json.loads`` of every frame, and one ``dict`` per quote with the 8 stored fields;
* the quotes go through an ``asyncio.Queue`` to a writer task that takes batches of 10,000 rows
  (or what arrived within 1 s) and stores them with asyncpg ``executemany`` of
  ``INSERT ... ON CONFLICT DO NOTHING`` into an 8-column ``quotes`` table (:data:`DDL`; a
  TimescaleDB hypertable on ``exchange_ts``, key ``(instrument_name, exchange_ts)``).

Nothing else: no reconnects, no heartbeat, no rejected-frame store, no metrics. The CA of a
``wss://`` server is the default context's (``SSL_CERT_FILE``).

Usage: ``python benchmarks/seed_design.py WS_URL REST_URL DSN [--currency ETH]`` (runs until
SIGTERM/SIGINT or the server closes the socket; prints ``seed: N rows`` on exit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import urllib.request
from datetime import UTC, datetime

import asyncpg
import websockets

#: The seed's quotes table (8 columns; prices and sizes as the exchange sends them, in the
#: instrument's quote currency and contracts).
DDL = """
CREATE TABLE IF NOT EXISTS quotes (
    exchange_ts      timestamptz      NOT NULL,
    instrument_name  text             NOT NULL,
    best_bid_price   double precision,
    best_bid_amount  double precision,
    best_ask_price   double precision,
    best_ask_amount  double precision,
    mark_price       double precision,
    underlying_price double precision,
    PRIMARY KEY (instrument_name, exchange_ts)
);
SELECT create_hypertable('quotes', 'exchange_ts', if_not_exists => TRUE);
"""
#: The seed's fields (the dict keys, in column order).
FIELDS = ("exchange_ts", "instrument_name", "best_bid_price", "best_bid_amount", "best_ask_price",
          "best_ask_amount", "mark_price", "underlying_price")
INSERT = (f"INSERT INTO quotes ({', '.join(FIELDS)}) VALUES ({', '.join(f'${i}' for i in range(1, 9))}) "
          "ON CONFLICT DO NOTHING")
BATCH_ROWS = 10_000
FLUSH_S = 1.0
SUBSCRIBE_CHUNK = 500


async def writer(queue: asyncio.Queue, conn: asyncpg.Connection, done: asyncio.Event) -> int:
    """Batches of 10,000 quotes (fewer only when no quote came for 1 s, or at the end) ->
    executemany. Returns the rows written."""
    stored = 0
    batch: list[dict] = []
    while True:
        idle = False
        try:
            batch.append(await asyncio.wait_for(queue.get(), FLUSH_S))
            while len(batch) < BATCH_ROWS and not queue.empty():
                batch.append(queue.get_nowait())
        except TimeoutError:
            idle = True
        ending = done.is_set() and queue.empty()
        if batch and (len(batch) >= BATCH_ROWS or idle or ending):
            await conn.executemany(INSERT, [tuple(q[f] for f in FIELDS) for q in batch])
            stored += len(batch)
            batch = []
        if ending and not batch:
            return stored


async def collect(ws_url: str, rest_url: str, dsn: str, currency: str, stop: asyncio.Event) -> int:
    url = f"{rest_url}/public/get_instruments?currency={currency}&kind=option"
    names = [r["instrument_name"] for r in json.loads(
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=60).read()))["result"]]  # noqa: S310
    conn = await asyncpg.connect(dsn)
    queue: asyncio.Queue = asyncio.Queue()
    done = asyncio.Event()
    write_task = asyncio.create_task(writer(queue, conn, done))
    try:
        async with websockets.connect(ws_url, max_size=None, compression=None) as ws:
            channels = [f"ticker.{n}.100ms" for n in names]
            for i in range(0, len(channels), SUBSCRIBE_CHUNK):
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": i + 1, "method": "public/subscribe",
                                          "params": {"channels": channels[i:i + SUBSCRIBE_CHUNK]}}))
            stopped = asyncio.create_task(stop.wait())
            reading = asyncio.create_task(_read(ws, queue))
            await asyncio.wait({stopped, reading}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            reading.cancel()
    finally:
        done.set()
        stored = await write_task
        await conn.close()
    return stored


async def _read(ws, queue: asyncio.Queue) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("method") != "subscription":
                continue
            d = msg["params"]["data"]
            queue.put_nowait({
                "exchange_ts": datetime.fromtimestamp(d["timestamp"] / 1000, UTC),
                "instrument_name": d["instrument_name"],
                "best_bid_price": d.get("best_bid_price"),
                "best_bid_amount": d.get("best_bid_amount"),
                "best_ask_price": d.get("best_ask_price"),
                "best_ask_amount": d.get("best_ask_amount"),
                "mark_price": d.get("mark_price"),
                "underlying_price": d.get("underlying_price"),
            })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ws_url")
    p.add_argument("rest_url", help="the REST prefix, e.g. https://127.0.0.1:8765/api/v2")
    p.add_argument("dsn")
    p.add_argument("--currency", default="ETH")
    args = p.parse_args()

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await collect(args.ws_url, args.rest_url, args.dsn, args.currency, stop)

    print(f"seed: {asyncio.run(run())} rows", flush=True)


if __name__ == "__main__":
    main()
