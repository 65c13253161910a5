"""Kraken emulation on the real data of ../shared/data/real/kraken: the 2021 v1 capture's trades
re-expressed as v2 frames (ids assigned in order, marked), tardis' v2 frames, and REST Trades
(since cursor), OHLC (720 limit), AssetPairs and rate-limit errors over HTTP, through the real
client."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.kraken.emulation import CONVERTED, KrakenEmulation
from collector_daemon.venues.kraken.rest import KrakenRest, KrakenRestError

SOURCE = "kraken/nautilus_test_data/http_trades.json"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_v1_capture_trades_as_converted_v2_frames(real_data_dir: Path) -> None:
    path = real_data_dir / "kraken/cryptofeed_2021-04-05_ws_v1_trade_ticker_book.jsonl.gz"
    v1 = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "recv" and rec["raw"].startswith("[") and '"trade",' in rec["raw"]:
                v1.append(json.loads(rec["raw"]))
    events = KrakenEmulation().load(path, None)
    assert len(events) == len(v1) == 12
    ids: dict[str, int] = {}
    for ev, msg in zip(sorted(events, key=lambda e: e.ts), sorted(v1, key=lambda m: float(m[1][0][2]))):
        assert ev.data["tickvault_converted"] == CONVERTED
        symbol = msg[3].replace("XBT", "BTC")
        for d, (price, volume, ts, side, kind, _) in zip(ev.data["data"], msg[1]):
            ids[symbol] = ids.get(symbol, 0) + 1
            assert (d["symbol"], d["price"], d["qty"], d["side"], d["ord_type"], d["trade_id"]) == (
                symbol, float(price), float(volume), {"b": "buy", "s": "sell"}[side],
                {"l": "limit", "m": "market"}[kind], ids[symbol])
            assert d["timestamp"].startswith("2021-04-05T23:4")


def test_tardis_v2_frames(real_data_dir: Path) -> None:
    events = KrakenEmulation().load(
        real_data_dir / "kraken/tardis-node_test-embedded_kraken_ws_v2_messages.jsonl", None)
    assert [(e.kind, e.trade_ids) for e in events] == [
        ("trades", (("BTC/USD", "122"),)), ("trades", (("BTC/USD", "123"),))]


def test_rest_trades_cursor_ohlc_limit_asset_pairs_and_rate_limits(real_data_dir: Path) -> None:
    real = json.loads((real_data_dir / SOURCE).read_text())["result"]["XBTUSDT"]

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / SOURCE, venue="kraken",
                                               wait_for_clients=0, close_when_done=True,
                                               faults=Faults(seed=2, rest_errors=0.3)))
        server.venue.trades_page = 100
        await server.start()
        try:
            await server.finished.wait()
            async with KrakenRest(server.rest_url, pair_interval_s=0, ip_interval_s=0,
                                  backoff_max_s=0.02, attempts=30) as rest:
                names = await rest.rest_pairs(["BTC/USDT", "ETH/USD"])
                pages = [p async for p in rest.trade_pages("XBTUSDT", 0)]
                ohlc = await rest.ohlc("XBTUSDT", 1)
                counters = (rest.calls, rest.retries, rest.rate_limited)
            server.replayer.faults.rest_errors = 1.0
            async with KrakenRest(server.rest_url, pair_interval_s=0, ip_interval_s=0,
                                  backoff_max_s=0.01, attempts=2) as rest:
                with pytest.raises(KrakenRestError) as err:
                    await rest.asset_pairs()
            return names, pages, ohlc, counters, err.value.code
        finally:
            await server.stop()

    names, pages, ohlc, (calls, retries, limited), code = run(scenario())
    assert names == {"BTC/USDT": "XBTUSDT"}          # ETH/USD is not listed
    got = {}
    for rows, _ in pages:
        for r in rows:
            got[r[6]] = r
    assert len(pages) == 12 and sorted(got) == [r[6] for r in real]   # pages overlap by one trade
    assert all(float(got[r[6]][0]) == float(r[0]) and got[r[6]][3:5] == r[3:5] and
               round(got[r[6]][2] * 1e6) == round(r[2] * 1e6) for r in real)
    assert len(ohlc) == 720                           # 721 published: only the latest 720
    assert retries > 0 and limited == retries and calls == retries + 1 + len(pages) + 1   # AssetPairs read once
    assert code in ("EAPI:Rate limit exceeded", 429)
