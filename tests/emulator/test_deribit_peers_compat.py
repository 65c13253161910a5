"""What a peer such as cryptofeed sends to Deribit, against the emulator: ``public/auth``,
``private/subscribe`` of ``ticker.{name}.raw`` / ``trades.{name}.raw`` (served as the ``100ms``
stream), and ``get_instruments`` records as complete as the exchange's (cryptofeed reads
``settlement_period`` from every one). Also the replayer's fast path: byte for byte what the
faithful path sends. Values are checked against the real captures and the real
``get_instruments`` responses of 2021-07-22."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import websockets

from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.deribit.emulation.instruments import parse_instrument, settlement_period
from test_emulator_server import capture_notifications

pytestmark = pytest.mark.realdata

ETH_OPTIONS = ["ETH-16APR21-1400-P", "ETH-16APR21-1600-C", "ETH-23APR21-2000-C",
               "ETH-24SEP21-320-P", "ETH-30APR21-2240-P", "ETH-6APR21-2400-P", "ETH-9APR21-1950-C"]


def real_instrument_records(capture: Path) -> list[dict[str, Any]]:
    """Every record of the capture's recorded ``public/get_instruments`` responses."""
    out = []
    with gzip.open(capture, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "http_response" and "get_instruments" in rec["url"]:
                out.extend(json.loads(rec["raw"])["result"])
    return out


def test_settlement_period_and_expiry_match_every_real_record(capture_0722):
    records = real_instrument_records(capture_0722)
    assert len(records) == 824
    for r in records:
        info = parse_instrument(r["instrument_name"])
        assert (settlement_period(info), info.expiry_ms) == (
            r["settlement_period"], r["expiration_timestamp"]), r["instrument_name"]
    assert {r["settlement_period"] for r in records} == {"day", "week", "month", "perpetual"}


def test_synthesized_records_have_every_field_of_the_exchange_records(capture_0405, capture_0722):
    real = real_instrument_records(capture_0722)
    real_option_keys = set().union(*(r.keys() for r in real if r["kind"] == "option"))

    async def main() -> list[dict[str, Any]]:
        server = EmulatorServer(EmulatorConfig(capture=capture_0405))
        await server.start()
        try:
            return server.venue.rest.get_instruments({"currency": "ETH", "kind": "option"})
        finally:
            await server.stop()

    rows = asyncio.run(main())
    assert sorted(r["instrument_name"] for r in rows) == ETH_OPTIONS
    eth_real = next(r for r in real if r["kind"] == "option" and r["base_currency"] == "ETH")
    for row in rows:
        assert real_option_keys <= set(row), real_option_keys - set(row)
        for key in ("kind", "base_currency", "quote_currency", "tick_size", "contract_size",
                    "min_trade_amount", "maker_commission", "taker_commission", "is_active"):
            assert row[key] == eth_real[key], key
    periods = {r["instrument_name"]: r["settlement_period"] for r in rows}
    assert periods == {"ETH-16APR21-1400-P": "week", "ETH-16APR21-1600-C": "week",
                       "ETH-23APR21-2000-C": "week", "ETH-24SEP21-320-P": "month",
                       "ETH-30APR21-2240-P": "month", "ETH-6APR21-2400-P": "day",
                       "ETH-9APR21-1950-C": "week"}


def test_auth_and_private_subscribe_of_raw_channels_as_cryptofeed_sends_them(capture_0405, caplog):
    async def main() -> dict[str, Any]:
        server = EmulatorServer(EmulatorConfig(capture=capture_0405, close_when_done=True))
        await server.start()
        out: dict[str, Any] = {"frames": []}
        try:
            async with websockets.connect(server.ws_url) as ws:
                async def call(id_: str, method: str, params: dict) -> dict:
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method,
                                              "params": params}))
                    return json.loads(await ws.recv())

                raw = [f"ticker.{n}.raw" for n in ETH_OPTIONS] + ["trades.ETH-9APR21-1950-C.raw"]
                out["private_before"] = await call("102", "private/subscribe", {"channels": raw})
                out["public_raw_before"] = await call("101", "public/subscribe", {"channels": raw})
                out["bad_grant"] = await call("auth_0", "public/auth", {"grant_type": "password"})
                out["auth"] = await call("auth_1", "public/auth", {
                    "grant_type": "client_signature", "client_id": "anything", "timestamp": 1,
                    "signature": "00", "nonce": "xyz", "data": "", "scope": "session:abc"})
                out["private"] = await call("102", "private/subscribe",
                                            {"scope": "session:abc", "channels": raw})
                async for message in ws:
                    out["frames"].append(json.loads(message)["params"])
            out["stats"] = server.stats()
        finally:
            await server.stop()
        return out

    with caplog.at_level(logging.WARNING):
        out = asyncio.run(asyncio.wait_for(main(), 60))
    assert out["private_before"]["error"] == {"code": 13009, "message": "unauthorized"}
    assert out["public_raw_before"]["result"] == []          # raw needs auth (A.2)
    assert out["bad_grant"]["error"]["code"] == -32602
    auth = out["auth"]["result"]
    assert auth["token_type"] == "bearer" and auth["expires_in"] == 31536000
    assert len(auth["access_token"]) == 32 and "session:abc" in auth["scope"]
    assert "accepted without checking its credentials" in caplog.text and "'anything'" in caplog.text
    assert out["private"]["result"] == [f"ticker.{n}.raw" for n in ETH_OPTIONS] + [
        "trades.ETH-9APR21-1950-C.raw"]
    # the raw channels carry the capture's tickers, value for value, in order
    expected = [data for channel, data in capture_notifications(capture_0405)
                if channel.startswith("ticker.ETH-")]
    assert len(expected) == 197
    assert [f["data"] for f in out["frames"]] == expected
    assert all(f["channel"] == f"ticker.{f['data']['instrument_name']}.raw" for f in out["frames"])
    assert out["stats"]["totals"]["notifications"] == 197


def _collect_all(capture: Path, fast: bool, loop: int,
                 kinds: tuple[str, ...] = ("ticker",)) -> tuple[list[bytes], dict[str, Any]]:
    async def main() -> tuple[list[bytes], dict[str, Any]]:
        server = EmulatorServer(EmulatorConfig(capture=capture, loop=loop, fanout=3, fast=fast,
                                               close_when_done=True))
        await server.start()
        frames: list[bytes] = []
        try:
            async with websockets.connect(server.ws_url, max_size=None) as ws:
                names = [r["instrument_name"] for r in
                         server.venue.rest.get_instruments({"currency": "ETH"})]
                channels = [f"{kind}.{n}.100ms" for kind in kinds for n in names]
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe",
                                          "params": {"channels": channels}}))
                await ws.recv()
                async for message in ws:
                    frames.append(message.encode() if isinstance(message, str) else message)
            return frames, server.stats()
        finally:
            await server.stop()

    return asyncio.run(asyncio.wait_for(main(), 120))


def test_fast_path_sends_exactly_the_faithful_bytes(capture_0405):
    faithful, s1 = _collect_all(capture_0405, fast=False, loop=4)
    fast, s2 = _collect_all(capture_0405, fast=True, loop=4)
    assert s1["replay"]["path"] == "faithful" and s2["replay"]["path"] == "fast"
    assert s2["replay"]["fast_fallback"] is None
    # 7 ETH options x fan-out 3, 4 loops
    assert len(faithful) == len(fast) == s1["totals"]["notifications"] == s2["totals"]["notifications"]
    assert len(fast) == 4 * 3 * 197
    assert fast == faithful
    assert s1["totals"]["by_channel"] == s2["totals"]["by_channel"]
    assert s1["clients"][0]["last_sent_ms"] == s2["clients"][0]["last_sent_ms"]
    assert s2["replay"]["events_played"] == s1["replay"]["events_played"]
    # book change ids that gain a digit within the loops cannot be patched in place
    books, s3 = _collect_all(capture_0405, fast=True, loop=4, kinds=("ticker", "book"))
    assert s3["replay"]["path"] == "faithful" and "change_id" in s3["replay"]["fast_fallback"]
    assert len(books) == s3["totals"]["notifications"] > len(fast)


def test_fast_path_falls_back_to_faithful_for_trades(capture_0405, cyri113_csv):
    async def main() -> dict[str, Any]:
        server = EmulatorServer(EmulatorConfig(capture=capture_0405, trades=cyri113_csv, loop=2,
                                               fast=True, close_when_done=True))
        await server.start()
        try:
            async with websockets.connect(server.ws_url, max_size=None) as ws:
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe",
                                          "params": {"channels": ["trades.option.BTC.100ms"]}}))
                async for _ in ws:
                    pass
            return server.stats()
        finally:
            await server.stop()

    stats = asyncio.run(asyncio.wait_for(main(), 120))
    assert stats["replay"]["path"] == "faithful"
    assert "trades" in stats["replay"]["fast_fallback"]
    assert stats["totals"]["trades_sent"] == 2 * 277
