"""The Bybit v5 emulation over loopback WebSockets and HTTP, replaying the real 2026-08-09 capture
(../shared/data/real/bybit); values are checked against the capture read independently."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.bybit.rest import BybitRest, BybitRestError

pytestmark = pytest.mark.realdata

CAPTURE = "cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
TARDIS = "tardis-node_test-embedded_bybit_ws_messages_v5+legacy.jsonl"


@pytest.fixture(scope="module")
def capture(real_data_dir: Path) -> Path:
    return real_data_dir / "bybit" / CAPTURE


def capture_messages(path: Path, category: str, prefix: str) -> list[dict]:
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "recv" and rec["url"].endswith("/" + category):
                msg = json.loads(rec["raw"])
                if msg.get("topic", "").startswith(prefix):
                    out.append(msg)
    return out


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _server(path: Path, **kw) -> EmulatorServer:
    server = EmulatorServer(EmulatorConfig(capture=path, venue="bybit", speed="max", **kw))
    await server.start()
    return server


async def _recv_json(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_linear_acks_pong_refusals_and_replayed_frames(capture: Path) -> None:
    expected = [json.dumps(m, separators=(",", ":")) for m in capture_messages(capture, "linear", "tickers.BTCUSDT")]

    async def scenario():
        server = await _server(capture, close_when_done=True)
        try:
            async with websockets.connect(server.ws_urls["/v5/public/linear"]) as ws:
                await ws.send('{"op":"ping","req_id":"p1"}')
                pong = await _recv_json(ws)
                await ws.send(json.dumps({"req_id": "s1", "op": "subscribe", "args": ["tickers.NOPEUSDT"]}))
                refused = await _recv_json(ws)
                await ws.send(json.dumps({"req_id": "s2", "op": "subscribe", "args": ["tickers.BTCUSDT"]}))
                ok = await _recv_json(ws)
                got = []
                async for frame in ws:
                    got.append(frame)
            return pong, refused, ok, got
        finally:
            await server.stop()

    pong, refused, ok, got = run(scenario())
    assert pong == {"success": True, "ret_msg": "pong", "conn_id": pong["conn_id"], "req_id": "p1", "op": "ping"}
    assert refused["success"] is False and "tickers.NOPEUSDT" in refused["ret_msg"] and refused["req_id"] == "s1"
    assert ok["success"] is True and ok["req_id"] == "s2" and ok["op"] == "subscribe"
    # loop 0 sends the recorded frames value for value (the raw text of the capture)
    assert [json.loads(f) for f in got] == [json.loads(e) for e in expected]


def test_option_endpoint_command_resp_pong_and_limits(capture: Path, real_data_dir: Path) -> None:
    async def scenario():
        server = await _server(capture, trades=real_data_dir / "bybit" / TARDIS, align_trades=True)
        try:
            async with websockets.connect(server.ws_urls["/v5/public/option"]) as ws:
                await ws.send('{"op":"ping"}')
                pong = await _recv_json(ws)
                await ws.send(json.dumps({"op": "subscribe", "req_id": "x",
                                          "args": ["tickers.SOL-28APR23-24-C", "tickers.ETH-1JAN20-1-C"]}))
                ack = await _recv_json(ws)
            async with websockets.connect(server.ws_urls["/v5/public/spot"]) as ws:
                await ws.send(json.dumps({"op": "subscribe", "req_id": "s",
                                          "args": [f"tickers.X{i}USDT" for i in range(11)]}))
                too_many = await _recv_json(ws)
            async with websockets.connect(server.ws_urls["/v5/public/linear"]) as ws:
                long = [f"tickers.{'A' * 60}{i}" for i in range(400)]   # ~27,000 characters
                await ws.send(json.dumps({"op": "subscribe", "req_id": "l", "args": long}))
                too_long = await _recv_json(ws)
            return pong, ack, too_many, too_long
        finally:
            await server.stop()

    pong, ack, too_many, too_long = run(scenario())
    assert pong["op"] == "pong" and pong["args"][0].isdigit()
    assert ack["type"] == "COMMAND_RESP" and "req_id" not in ack
    assert ack["data"] == {"failTopics": ["tickers.ETH-1JAN20-1-C"], "successTopics": ["tickers.SOL-28APR23-24-C"]}
    assert too_many["success"] is False and "exceeds 10" in too_many["ret_msg"]
    assert too_long["success"] is False and "21000" in too_long["ret_msg"]


def test_rest_instruments_cursor_paging_recent_trade_and_errors(capture: Path) -> None:
    recorded = {}
    with gzip.open(capture, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "http_response":
                body = json.loads(rec["raw"])
                recorded[body["result"]["category"]] = [i["symbol"] for i in body["result"]["list"]]
    trades = [t for msg in capture_messages(capture, "linear", "publicTrade.SOLUSDT") for t in msg["data"]]

    async def scenario():
        server = await _server(capture, wait_for_clients=0, close_when_done=True)
        try:
            await server.finished.wait()
            async with BybitRest(server.rest_url) as rest:
                linear = await rest.instruments("linear", page_size=300)
                calls = rest.calls
                spot = await rest.instruments("spot")
                recent = await rest.recent_trades("linear", symbol="SOLUSDT")
            async with httpx.AsyncClient() as http:
                bad = (await http.get(f"{server.rest_url}/market/recent-trade",
                                      params={"category": "spot", "symbol": "BTCUSDT", "limit": 61})).json()
            return linear, calls, spot, recent, bad
        finally:
            await server.stop()

    linear, calls, spot, recent, bad = run(scenario())
    assert [i["symbol"] for i in linear] == recorded["linear"] and len(linear) == 800 and calls == 3
    assert [i["symbol"] for i in spot] == recorded["spot"]
    assert [(t["execId"], t["price"], t["size"], t["side"], int(t["time"])) for t in recent] == \
        [(t["i"], t["p"], t["v"], t["S"], t["T"]) for t in reversed(trades)]
    assert bad["retCode"] == 10001


def test_rest_faults_10006_and_403_are_retried(capture: Path) -> None:
    async def scenario():
        server = await _server(capture, wait_for_clients=0, faults=Faults(seed=3, rest_errors=0.5))
        try:
            async with BybitRest(server.rest_url, ban_wait_s=0.01, backoff_max_s=0.05, attempts=20) as rest:
                for _ in range(10):
                    assert len(await rest.instruments("spot")) == 557
                counts = (rest.calls, rest.retries, rest.bans)
            async with BybitRest(server.rest_url, ban_wait_s=0.01, backoff_max_s=0.01, attempts=1) as rest:
                server.replayer.faults.rest_errors = 1.0
                with pytest.raises(BybitRestError) as err:
                    await rest.instruments("spot")
            return counts, dict(server.replayer.rest_faults), err.value.code
        finally:
            await server.stop()

    (calls, retries, bans), faults, code = run(scenario())
    assert retries == calls - 10 and retries > 0 and bans >= 1
    assert faults["rpc"] >= 1 and faults["http429"] == bans
    assert code in (10006, 403)


def test_cli_emulate_venue_bybit(capture: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector_daemon.cli", "emulate", "--venue", "bybit", str(capture),
         "--port", "0", "--speed", "max", "--wait-for-clients", "0", "--exit-when-done"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    banner = proc.stdout.splitlines()[0]
    for path in ("/v5/public/linear", "/v5/public/option", "/v5/public/spot"):
        assert path in banner
    assert "replay finished: 959/959 events" in proc.stdout
    assert "totals: 0 clients" in proc.stdout


def test_fanout_rekeys_linear_symbols(capture: Path) -> None:
    """``fanout=3``: each of the capture's 4 linear symbols gets copies X1/X2, listed like the
    original and sent every message of the original with the symbol re-keyed (loop suffixes
    kept); spot is not fanned out."""
    from collector_daemon.venues.bybit.emulation import BybitEmulation

    emu = BybitEmulation(fanout=3)
    events = emu.load(capture, None)
    assert emu.copies == {s: [f"X1{s}", f"X2{s}"] for s in ("BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT")}
    listed = {i["symbol"]: i for i in emu.instruments["linear"]}
    assert len(listed) == 800 + 8 and listed["X2SOLUSDT"] == {**listed["SOLUSDT"], "symbol": "X2SOLUSDT"}
    trade = next(e for e in events if e.kind == "trades" and e.routes[0] == "linear|publicTrade.BTCUSDT")
    original, *copies = emu.instantiate(trade, 1)
    assert [c.routes for c in copies] == [("linear|publicTrade.X1BTCUSDT",), ("linear|publicTrade.X2BTCUSDT",)]
    for c in copies:
        assert c.data["topic"] == c.routes[0].split("|")[1] and {t["s"] for t in c.data["data"]} == {c.instrument}
        assert [t["i"] for t in c.data["data"]] == [t["i"] for t in original.data["data"]]
        assert [tid for _, tid in c.trade_ids] == [tid for _, tid in original.trade_ids]
        assert all(tid.endswith("-L1") for _, tid in c.trade_ids)
        assert [{k: v for k, v in t.items() if k != "s"} for t in c.data["data"]] == \
            [{k: v for k, v in t.items() if k != "s"} for t in original.data["data"]]
    ticker = next(e for e in events if e.kind == "tickers" and e.routes[0].startswith("linear|"))
    copy = emu.instantiate(ticker, 0)[1]
    assert copy.data["data"] == {**ticker.data["data"], "symbol": "X1" + ticker.data["data"]["symbol"]}
    assert emu.route("linear|tickers.X2DOGEUSDT") == "linear|tickers.X2DOGEUSDT"
    spot = next(e for e in events if e.routes[0].startswith("spot|"))
    assert emu.instantiate(spot, 0) == (spot,)
