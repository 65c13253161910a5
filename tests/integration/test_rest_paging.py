"""DeribitRest's trade pagers over real HTTP on loopback: past 1,000 trades against the emulator
(9,147 real BTC-PERPETUAL trades of the cyri113 capture), and a server that contradicts itself
(an empty page with has_more), which must end in a clear DeribitRestError, never a crash or a
quiet stop that would pass a hole off as complete."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.deribit.rest import MAX_PAGE, DeribitRest, DeribitRestError
from replay_helpers import CAPTURE, TRADES_CSV

PERP = "BTC-PERPETUAL"


def csv_trades(real: Path) -> list[dict[str, str]]:
    with gzip.open(real / TRADES_CSV, "rt") as fh:
        return list(csv.DictReader(fh))


async def _with_emulator(real: Path, body):
    """Run ``body(rest, calls)`` against an emulator that has published the whole trade source
    (no client needed: ``wait_for_clients=0``)."""
    server = EmulatorServer(EmulatorConfig(capture=real / CAPTURE, trades=real / TRADES_CSV,
                                           wait_for_clients=0))
    await server.start(host="127.0.0.1", port=0)
    try:
        await asyncio.wait_for(server.finished.wait(), 30)
        async with DeribitRest(server.rest_url) as rest:
            return await body(rest)
    finally:
        await server.stop()


@pytest.mark.realdata
def test_pagers_go_past_1000_trades_in_order_exactly_once(real_data_dir):
    source = [t for t in csv_trades(real_data_dir) if t["instrument_name"] == PERP]
    # the emulator derives trade_seq 1..n in (timestamp, id) order
    ordered = sorted(source, key=lambda t: (int(t["timestamp"]), int(t["id"])))
    assert len(ordered) == 9147

    async def body(rest: DeribitRest):
        by_seq = [p async for p in rest.trades_by_seq(PERP, 1, len(ordered))]
        seq_calls = rest.calls
        window = [p async for p in rest.trades_by_seq(PERP, 500, 2700)]
        first_ms, last_ms = int(ordered[0]["timestamp"]), int(ordered[-1]["timestamp"])
        before = rest.calls
        by_time = [p async for p in rest.trades_by_time("BTC", first_ms, last_ms, kind="future")]
        return by_seq, seq_calls, window, by_time, rest.calls - before

    by_seq, seq_calls, window, by_time, time_calls = asyncio.run(_with_emulator(real_data_dir, body))
    assert [len(p) for p in by_seq] == [MAX_PAGE] * 9 + [147] and seq_calls == 10
    flat = [t for p in by_seq for t in p]
    assert [t.trade_seq for t in flat] == list(range(1, 9148))
    assert [t.trade_id for t in flat] == [t["id"] for t in ordered]
    for got, src in zip(flat, ordered):
        assert (got.price, got.amount, got.direction, got.timestamp) == (
            float(src["price"]), float(src["amount"]), src["direction"], int(src["timestamp"]))
    assert [t.trade_seq for p in window for t in p] == list(range(500, 2701))
    assert [len(p) for p in window] == [1000, 1000, 201]
    # by time: every trade once (the last millisecond of a page is fetched again, deduplicated)
    timed = [t.trade_id for p in by_time for t in p]
    assert len(timed) == len(set(timed)) == 9147 and set(timed) == {t["id"] for t in ordered}
    assert time_calls >= 10


class _Contradicting(BaseHTTPRequestHandler):
    """Serves one full page, then an empty page that still says has_more."""

    def do_GET(self):  # noqa: N802 - http.server API
        query = dict(parse_qsl(urlsplit(self.path).query))
        first = query.get("start_seq") == "1" or query.get("start_timestamp") == "1617644856000"
        trades = [{"trade_id": f"ETH-{i}", "trade_seq": i, "instrument_name": "ETH-9APR21-1950-C",
                   "timestamp": 1617644856000 + i, "price": 0.05, "amount": 1.0, "direction": "buy"}
                  for i in range(1, MAX_PAGE + 1)] if first else []
        body = json.dumps({"jsonrpc": "2.0", "result": {"trades": trades, "has_more": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def contradicting_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Contradicting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v2"
    finally:
        server.shutdown()
        server.server_close()


def test_empty_page_with_has_more_is_a_clear_error(contradicting_url):
    async def run(pager):
        pages = []
        async with DeribitRest(contradicting_url) as rest:
            with pytest.raises(DeribitRestError, match="empty page with has_more") as err:
                async for page in pager(rest):
                    pages.append(page)
        return pages, err.value

    for pager in (lambda r: r.trades_by_seq("ETH-9APR21-1950-C", 1, 5000),
                  lambda r: r.trades_by_time("ETH", 1617644856000, 1617644999000)):
        pages, err = asyncio.run(run(pager))
        assert [len(p) for p in pages] == [MAX_PAGE]       # what came before the contradiction
        assert err.code == 200 and err.method.startswith("get_last_trades_by_")
