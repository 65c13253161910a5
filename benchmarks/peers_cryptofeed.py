"""The cryptofeed arm of benchmarks/peers.py: cryptofeed's own Deribit feed and its own Postgres
backend, pointed at the emulator. Runs in a separate virtualenv (``.venv-peers``, created by
peers.py with ``pip install cryptofeed[postgres]``), so it imports only cryptofeed and the
standard library.

Pointing it at the emulator takes a subclass of its Deribit feed that replaces the two class
attributes naming the exchange's URLs (``websocket_endpoints``, ``rest_endpoints``), nothing else;
the emulator serves ``wss://`` (cryptofeed refuses ``ws://``) with a CA given through
``SSL_CERT_FILE`` (websockets, aiohttp) and ``REQUESTS_CA_BUNDLE`` (requests, used for the
instrument list). Ticker and trades are authenticated Deribit channels in cryptofeed (``raw``
intervals): any key is accepted by the emulator on loopback.

Tables: ``ticker`` and ``trades`` as in cryptofeed's ``examples/postgres_tables.sql`` (created by
peers.py). The feed is split into feeds of at most ``--per-feed`` instruments, because one
``private/subscribe`` of every channel would exceed Deribit's 32 kB request limit (as it would on
the exchange).

Usage (by peers.py)::

    .venv-peers/bin/python benchmarks/peers_cryptofeed.py --ws wss://127.0.0.1:P/ws/api/v2 \\
        --rest https://127.0.0.1:P --currency ETH --pg-port N --db NAME --symbols-out FILE
"""

from __future__ import annotations

import argparse
import json
import logging
import urllib.request
from pathlib import Path

from cryptofeed import FeedHandler
from cryptofeed.backends.postgres import TickerPostgres, TradePostgres
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import TICKER, TRADES
from cryptofeed.exchanges import Deribit


def emulated_deribit(ws_url: str, rest_base: str) -> type[Deribit]:
    """cryptofeed's Deribit feed with the emulator's endpoints (same routes as upstream's, for
    the currencies the emulator knows)."""
    routes = Routes([f"/api/v2/public/get_instruments?currency={c}" for c in ("BTC", "ETH")])

    class EmulatedDeribit(Deribit):
        websocket_endpoints = [WebsocketEndpoint(ws_url)]
        rest_endpoints = [RestEndpoint(rest_base, routes=routes)]

    return EmulatedDeribit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ws", required=True)
    p.add_argument("--rest", required=True, help="https://host:port (no path)")
    p.add_argument("--currency", default="ETH")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--db", required=True)
    p.add_argument("--per-feed", type=int, default=250)
    p.add_argument("--symbols-out", type=Path, help="write {std symbol: instrument name} here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    feed_cls = emulated_deribit(args.ws, args.rest)
    names = [r["instrument_name"] for r in json.loads(urllib.request.urlopen(  # noqa: S310
        f"{args.rest}/api/v2/public/get_instruments?currency={args.currency}&kind=option",
        timeout=60).read())["result"]]
    mapping = feed_cls.symbol_mapping()                    # std symbol -> exchange name
    by_name = {v: k for k, v in mapping.items()}
    symbols = [by_name[n] for n in names]
    if args.symbols_out:
        args.symbols_out.write_text(json.dumps({s: n for s, n in zip(symbols, names)}))
    pg = {"host": args.pg_host, "port": args.pg_port, "user": args.pg_user, "db": args.db}
    config = {"deribit": {"key_id": "benchmark", "key_secret": "benchmark"},
              "log": {"filename": "cryptofeed.log", "level": "WARNING"}}
    fh = FeedHandler(config=config)
    ticker, trades = TickerPostgres(**pg), TradePostgres(**pg)   # one writer per table
    for i in range(0, len(symbols), args.per_feed):
        fh.add_feed(feed_cls(config=config, symbols=symbols[i:i + args.per_feed],
                             channels=[TICKER, TRADES], callbacks={TICKER: ticker, TRADES: trades}))
    fh.run()


if __name__ == "__main__":
    main()
