"""The exchange emulator over loopback WebSockets and HTTP, replaying the real Deribit captures.

Every test asserts values against the source files themselves (read independently of the emulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import (
    EmulatorConfig,
    EmulatorServer,
    add_arguments,
    config_from_args,
)

pytestmark = pytest.mark.realdata

ETH_OPTIONS = sorted([
    "ETH-16APR21-1400-P", "ETH-16APR21-1600-C", "ETH-23APR21-2000-C", "ETH-24SEP21-320-P",
    "ETH-30APR21-2240-P", "ETH-6APR21-2400-P", "ETH-9APR21-1950-C",
])
ETH_TICKERS = [f"ticker.{name}.100ms" for name in ETH_OPTIONS]


# --- helpers --------------------------------------------------------------------------------------


def capture_notifications(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(channel, data)`` of every subscription notification in a capture, in file order."""
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "recv":
                msg = json.loads(rec["raw"])
                if msg.get("method") == "subscription":
                    out.append((msg["params"]["channel"], msg["params"]["data"]))
    return out


def capture_tickers(path: Path) -> dict[str, list[dict[str, Any]]]:
    tickers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for channel, data in capture_notifications(path):
        if channel.startswith("ticker."):
            tickers[data["instrument_name"]].append(data)
    return tickers


def csv_trades(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def run(coro: Any, timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(EmulatorConfig(**config))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Peer:
    """A minimal Deribit client: JSON-RPC calls; every other frame is kept in ``frames``."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[str | bytes] = []
        self._id = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[Peer]:
        async with websockets.connect(url, compression=None, **kwargs) as ws:
            yield cls(ws)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                                       "params": params or {}}))
        while True:
            raw = await self.ws.recv()
            msg = json.loads(raw)
            if msg.get("id") == self._id:
                return msg
            self.frames.append(raw)

    async def subscribe(self, channels: list[str]) -> list[str]:
        return (await self.call("public/subscribe", {"channels": channels}))["result"]

    async def read_until_closed(self) -> ConnectionClosed:
        try:
            while True:
                self.frames.append(await self.ws.recv())
        except ConnectionClosed as exc:
            return exc

    def notifications(self) -> list[dict[str, Any]]:
        msgs = (json.loads(f) for f in self.frames)
        return [m for m in msgs if m.get("method") == "subscription"]


async def http_get(server: EmulatorServer, method: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{server.rest_url}/public/{method}", params=params)


# --- streaming ------------------------------------------------------------------------------------


def test_replays_capture_tickers_and_csv_trades_exactly(capture_0405: Path, cyri113_csv: Path):
    """Every ETH ticker frame of the capture arrives once, re-channelled to 100ms, value-for-value,
    and every BTC option trade of the CSV arrives with derived trade_seq; stats agree."""
    expected_tickers = capture_tickers(capture_0405)
    option_rows = [r for r in csv_trades(cyri113_csv)
                   if r["instrument_name"].endswith(("-C", "-P"))]
    assert len(option_rows) == 277

    async def scenario() -> tuple[list[dict[str, Any]], ConnectionClosed, dict[str, Any]]:
        async with emulator(capture=capture_0405, trades=cyri113_csv, close_when_done=True) as srv:
            async with Peer.connect(srv.ws_url) as peer:
                channels = ETH_TICKERS + ["trades.option.BTC.100ms"]
                assert await peer.subscribe(channels) == channels
                closed = await peer.read_until_closed()
            await srv.finished.wait()
            async with httpx.AsyncClient() as client:
                stats = (await client.get(srv.stats_url)).json()
            assert stats == json.loads(json.dumps(srv.stats()))
            return peer.notifications(), closed, stats

    notes, closed, stats = run(scenario())
    assert isinstance(closed, ConnectionClosedOK)
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "replay finished")

    tickers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    trade_frames = []
    for n in notes:
        channel, data = n["params"]["channel"], n["params"]["data"]
        if channel.startswith("ticker."):
            assert channel == f"ticker.{data['instrument_name']}.100ms"
            tickers[data["instrument_name"]].append(data)
        else:
            assert channel == "trades.option.BTC.100ms"
            trade_frames.append(data)
    assert sorted(tickers) == ETH_OPTIONS
    for name in ETH_OPTIONS:
        assert tickers[name] == expected_tickers[name], name  # same frames, same order, same values

    # trades: one frame per (timestamp, instrument), all CSV option trades, CSV values
    assert all(len({(t["timestamp"], t["instrument_name"]) for t in f}) == 1 for f in trade_frames)
    trades = [t for f in trade_frames for t in f]
    rows = {r["id"]: r for r in option_rows}
    assert sorted(t["trade_id"] for t in trades) == sorted(rows)
    for t in trades:
        r = rows[t["trade_id"]]
        assert t["instrument_name"] == r["instrument_name"]
        assert t["timestamp"] == int(r["timestamp"])
        assert (t["price"], t["amount"], t["direction"]) == (
            float(r["price"]), float(r["amount"]), r["direction"])
        assert (t["index_price"], t["mark_price"], t["iv"]) == (
            float(r["index_price"]), float(r["mark_price"]), float(r["implied_volatility"]))
        assert "tick_direction" not in t
    seqs: dict[str, list[int]] = defaultdict(list)
    for t in trades:
        seqs[t["instrument_name"]].append(t["trade_seq"])
    for name, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), name  # derived, per instrument, time order
    assert [t["timestamp"] for t in trades] == sorted(t["timestamp"] for t in trades)

    totals = stats["totals"]
    assert totals["notifications"] == len(notes)
    assert totals["frames_by_instrument"]["ticker"] == {
        k: len(v) for k, v in expected_tickers.items() if k in ETH_OPTIONS}
    assert totals["trades_sent"] == 277
    assert totals["frames_by_instrument"]["trades"] == dict(
        Counter(r["instrument_name"] for r in option_rows))
    assert totals["by_channel"]["trades.option.BTC.100ms"] == len(trade_frames)
    assert stats["replay"]["state"] == "finished"
    assert stats["clients"][0]["close_code"] == 1000


def test_subscribe_acknowledges_only_valid_channels(capture_0405: Path):
    async def scenario() -> None:
        async with emulator(capture=capture_0405) as srv, Peer.connect(srv.ws_url) as peer:
            requested = [
                "ticker.ETH-9APR21-1950-C.raw",  # raw needs auth (13778): left out
                "ticker.ETH-9APR21-1950-C.100ms",
                "ticker.ETH-9APR21-1950-C.agg2",
                "book.ETH-9APR21-1950-C.100ms",
                "ticker.ETH-1JAN99-1-C.100ms",  # unknown instrument
                "ticker.ETH-9APR21-1950-C.5ms",  # unknown interval
                "trades.option.ETH.100ms",
                "trades.option.XYZ.100ms",  # unknown currency
                "trades.ETH-9APR21-1950-C.raw",
                "garbage",
            ]
            assert await peer.subscribe(requested) == [
                "ticker.ETH-9APR21-1950-C.100ms", "ticker.ETH-9APR21-1950-C.agg2",
                "book.ETH-9APR21-1950-C.100ms", "trades.option.ETH.100ms"]
            unsub = await peer.call("public/unsubscribe", {"channels": [
                "ticker.ETH-9APR21-1950-C.agg2", "ticker.BTC-1JAN99-1-C.100ms"]})
            assert unsub["result"] == ["ticker.ETH-9APR21-1950-C.agg2"]
            assert {"usIn", "usOut", "usDiff"} <= unsub.keys() and unsub["testnet"] is False
            assert unsub["usDiff"] == unsub["usOut"] - unsub["usIn"] >= 0

            big = await peer.call("public/subscribe", {"channels": [
                f"ticker.ETH-9APR21-{i}-C.100ms" for i in range(1200)]})  # > 32 kB
            assert big["error"] == {"code": -32600, "message": "request entity too large"}
            assert (await peer.call("public/nope"))["error"]["code"] == -32601
            bad = await peer.call("public/set_heartbeat", {"interval": 5})
            assert bad["error"]["code"] == -32602
            assert (await peer.call("public/test"))["result"] == {"version": "emulator"}

    run(scenario())


def test_heartbeat_closes_unresponsive_client_with_4000(capture_0405: Path):
    """set_heartbeat(10) → test_request every 10 s (scaled to 0.1 s here); answered ones keep
    the socket; the first unanswered one closes it with 4000 "heartbeat close"."""

    async def scenario() -> tuple[int, ConnectionClosed, float]:
        async with emulator(capture=capture_0405, heartbeat_unit=0.01) as srv, \
                Peer.connect(srv.ws_url) as peer:
            assert (await peer.call("public/set_heartbeat", {"interval": 10}))["result"] == "ok"
            answered = 0
            while answered < 3:
                msg = json.loads(await peer.ws.recv())
                if msg.get("id") == 99:  # the reply to our public/test
                    continue
                assert msg == {"jsonrpc": "2.0", "method": "heartbeat",
                               "params": {"type": "test_request"}}
                await peer.ws.send(json.dumps({"jsonrpc": "2.0", "id": 99,
                                               "method": "public/test", "params": {}}))
                answered += 1
            started = time.monotonic()
            closed = await peer.read_until_closed()
            return answered, closed, time.monotonic() - started

    answered, closed, waited = run(scenario())
    assert answered == 3
    assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (
        4000, "heartbeat close")
    assert 0.1 <= waited < 1.5


def test_drop_every_aborts_connections_and_records_windows(capture_0405: Path):
    """drop_every=50: every connection is aborted (1006, no close frame) after exactly 50
    notifications; the client reconnects; the stats record each drop and lost window."""

    async def scenario() -> tuple[list[tuple[int, int | None]], dict[str, Any]]:
        async with emulator(capture=capture_0405, speed=300, close_when_done=True,
                            faults=Faults(drop_every=50)) as srv:
            sessions = []
            while True:
                async with Peer.connect(srv.ws_url) as peer:
                    await peer.subscribe(ETH_TICKERS)
                    closed = await peer.read_until_closed()
                    sessions.append((len(peer.notifications()),
                                     closed.rcvd.code if closed.rcvd else None))
                    if closed.rcvd is not None:
                        break
            return sessions, srv.stats()

    sessions, stats = run(scenario())
    assert len(sessions) >= 3
    assert all(s == (50, None) for s in sessions[:-1])  # aborted: no close frame (1006)
    assert sessions[-1][0] <= 50 and sessions[-1][1] == 1000
    assert stats["totals"]["drops"] == len(sessions) - 1
    assert [c["notifications"] for c in stats["clients"]] == [n for n, _ in sessions]
    windows = stats["disconnect_windows"]
    assert [w["client"] for w in windows] == list(range(1, len(sessions)))
    for w in windows:
        assert w["reason"] == "drop"
        assert w["resumed_client"] == w["client"] + 1
        assert w["last_sent_ms"] <= w["first_sent_ms"]
    # the windows are real gaps: fewer frames arrived than the capture holds
    assert sum(n for n, _ in sessions) < sum(len(v) for v in capture_tickers(capture_0405).values()
                                             if v[0]["instrument_name"] in ETH_OPTIONS)


def test_loop_2_shifts_timestamps_ids_and_seqs(capture_0405: Path, cyri113_csv: Path):
    async def scenario() -> list[dict[str, Any]]:
        async with emulator(capture=capture_0405, trades=cyri113_csv, loop=2,
                            close_when_done=True) as srv, Peer.connect(srv.ws_url) as peer:
            await peer.subscribe(ETH_TICKERS + ["trades.any.BTC.100ms"])
            await peer.read_until_closed()
            return peer.notifications()

    notes = run(scenario())
    expected = capture_tickers(capture_0405)
    tickers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    trades = []
    for n in notes:
        if n["params"]["channel"].startswith("ticker."):
            tickers[n["params"]["data"]["instrument_name"]].append(n["params"]["data"])
        else:
            trades.extend(n["params"]["data"])

    shifts = set()
    for name in ETH_OPTIONS:
        first, second = tickers[name][: len(expected[name])], tickers[name][len(expected[name]):]
        assert first == expected[name]
        assert len(second) == len(expected[name])
        for a, b in zip(first, second):
            shifts.add(b["timestamp"] - a["timestamp"])
            assert {**b, "timestamp": a["timestamp"]} == a  # only the timestamp moves
    assert len(shifts) == 1
    shift = shifts.pop()
    rows = csv_trades(cyri113_csv)
    loop0_ts = [int(r["timestamp"]) for r in rows] + [
        d["timestamp"] for v in expected.values() for d in v]
    assert shift > max(loop0_ts) - min(loop0_ts)  # loop 1 is entirely later than loop 0

    assert len(trades) == 2 * len(rows) == 2 * 9424
    assert len({t["trade_id"] for t in trades}) == len(trades)  # unique ids over both loops
    assert len({(t["instrument_name"], t["trade_seq"]) for t in trades}) == len(trades)
    assert all(t["trade_id"].isdigit() for t in trades)
    loop0 = {t["trade_id"]: t for t in trades[: len(rows)]}
    assert set(loop0) == {r["id"] for r in rows}
    id_shift = int(trades[len(rows)]["trade_id"]) - int(trades[0]["trade_id"])
    assert id_shift > max(map(int, loop0)) - min(map(int, loop0))
    per_instrument = Counter(r["instrument_name"] for r in rows)
    for t in trades[len(rows):]:
        assert t["trade_seq"] > per_instrument[t["instrument_name"]]
        assert t["timestamp"] - shift == int(loop0[str(int(t["trade_id"]) - id_shift)]["timestamp"])
    perp = [t for t in trades if t["instrument_name"] == "BTC-PERPETUAL"]
    assert [t["trade_seq"] for t in perp] == list(range(1, 2 * 9147 + 1))
    assert all(b["timestamp"] - a["timestamp"] == shift for a, b in zip(perp[:9147], perp[9147:]))


def _is_valid_ticker(frame: str | bytes, channels: set[str]) -> bool:
    """A strict reading of a ticker notification (what a careful collector accepts)."""
    if isinstance(frame, bytes) or len(frame) > 1 << 16:
        return False

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        msg = json.loads(frame, parse_constant=no_constants)
    except ValueError:
        return False
    params = msg.get("params") if isinstance(msg, dict) else None
    if not isinstance(params, dict) or params.get("channel") not in channels:
        return False
    data = params.get("data")
    if not isinstance(data, dict):
        return False
    ts, name = data.get("timestamp"), data.get("instrument_name")
    if not isinstance(ts, int) or not 0 < ts < 2**63 or f"ticker.{name}.100ms" != params["channel"]:
        return False
    return all(data.get(f) is None or type(data.get(f)) in (int, float)
               for f in ("best_bid_price", "best_ask_price", "mark_price", "mark_iv"))


def test_malformed_frames_are_injected_and_counted(capture_0405: Path):
    async def scenario() -> tuple[list[str | bytes], dict[str, Any]]:
        async with emulator(capture=capture_0405, close_when_done=True,
                            faults=Faults(seed=7, malformed=100,
                                          malformed_oversize_bytes=300_000)) as srv:
            async with Peer.connect(srv.ws_url, max_size=None) as peer:
                await peer.subscribe(ETH_TICKERS)
                closed = await peer.read_until_closed()
                assert closed.rcvd is not None and closed.rcvd.code == 1000
            return peer.frames, srv.stats()

    frames, stats = run(scenario())
    valid = [f for f in frames if _is_valid_ticker(f, set(ETH_TICKERS))]
    bad = [f for f in frames if not _is_valid_ticker(f, set(ETH_TICKERS))]
    expected = capture_tickers(capture_0405)
    assert len(valid) == sum(len(expected[n]) for n in ETH_OPTIONS)
    assert len(bad) == 100
    assert stats["totals"]["malformed_sent"] == 100
    assert stats["totals"]["notifications"] == len(valid)
    assert sum(isinstance(f, bytes) for f in bad) >= 9  # binary frames
    assert sum(len(f) >= 300_000 for f in bad) >= 9  # oversized frames
    texts = [f for f in bad if isinstance(f, str)]
    assert any("NaN" in f for f in texts) and any("Infinity" in f for f in texts)
    assert any('"timestamp":"abc"' in f for f in texts)
    assert any("NOSUCH" in f for f in texts)


def test_refuse_channels_first_request_only(capture_0405: Path):
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with emulator(capture=capture_0405,
                            faults=Faults(refuse_channels=r"ETH-9APR21|ETH-16APR21")) as srv, \
                Peer.connect(srv.ws_url) as peer:
            first = await peer.subscribe(ETH_TICKERS)
            missing = [c for c in ETH_TICKERS if c not in first]
            retry = await peer.subscribe(missing)
            return first, missing, retry

    first, missing, retry = run(scenario())
    assert missing == ["ticker.ETH-16APR21-1400-P.100ms", "ticker.ETH-16APR21-1600-C.100ms",
                       "ticker.ETH-9APR21-1950-C.100ms"]
    assert len(first) == 4 and retry == missing

    async def fraction(seed: int) -> list[str]:
        async with emulator(capture=capture_0405,
                            faults=Faults(seed=seed, refuse_channels=0.5)) as srv, \
                Peer.connect(srv.ws_url) as peer:
            return await peer.subscribe(ETH_TICKERS)

    a, b = run(fraction(3)), run(fraction(3))
    assert a == b and 0 < len(a) < len(ETH_TICKERS)  # seeded: reproducible


def test_silent_after_stops_everything_but_keeps_socket(capture_0405: Path):
    async def scenario() -> tuple[int, bool, dict[str, Any]]:
        async with emulator(capture=capture_0405, faults=Faults(silent_after=20)) as srv, \
                Peer.connect(srv.ws_url) as peer:
            await peer.subscribe(ETH_TICKERS)
            await srv.finished.wait()
            await peer.ws.send(json.dumps({"jsonrpc": "2.0", "id": 5, "method": "public/test"}))
            with contextlib.suppress(TimeoutError):
                while True:
                    peer.frames.append(await asyncio.wait_for(peer.ws.recv(), 0.3))
            return len(peer.frames), peer.ws.state is websockets.State.OPEN, srv.stats()

    received, still_open, stats = run(scenario())
    assert received == 20 and still_open
    assert stats["clients"][0]["notifications"] == 20


def test_wait_for_clients_and_speed(capture_0405: Path):
    """Two clients are required: the first sees nothing until the second subscribed; then both
    get the whole capture; at speed 200 the ~2 minute capture takes ~0.6 s."""
    span_ms = 1617644975217 - 1617644856302  # the capture's clock: first to last frame

    async def scenario() -> tuple[int, int, int, float]:
        async with emulator(capture=capture_0405, speed=200, wait_for_clients=2,
                            close_when_done=True) as srv:
            async with Peer.connect(srv.ws_url) as a, Peer.connect(srv.ws_url) as b:
                await a.subscribe(ETH_TICKERS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(a.ws.recv(), 0.3)
                    raise AssertionError("replay started before the second client")
                started = time.monotonic()
                await b.subscribe(ETH_TICKERS)
                await asyncio.gather(a.read_until_closed(), b.read_until_closed())
                elapsed = time.monotonic() - started
                return len(a.notifications()), len(b.notifications()), \
                    srv.stats()["totals"]["notifications"], elapsed

    na, nb, total, elapsed = run(scenario())
    expected = sum(len(v) for k, v in capture_tickers(capture_0405).items() if k in ETH_OPTIONS)
    assert na == nb == expected and total == 2 * expected
    assert span_ms / 1000 / 200 * 0.6 < elapsed < span_ms / 1000 / 200 + 1.5


def test_max_idle_caps_the_gap_between_capture_and_trade_source(capture_0405: Path,
                                                                 cyri113_csv: Path):
    """2021 capture + 2026 trades at speed 1e6: the 5-year gap is capped at max_idle."""

    async def scenario() -> float:
        async with emulator(capture=capture_0405, trades=cyri113_csv, speed=1e6, max_idle=0.4,
                            close_when_done=True) as srv, Peer.connect(srv.ws_url) as peer:
            await peer.subscribe(["trades.option.BTC.100ms"])
            started = time.monotonic()
            await peer.read_until_closed()
            assert len([t for n in peer.notifications() for t in n["params"]["data"]]) == 277
            return time.monotonic() - started

    elapsed = run(scenario())
    assert 0.4 <= elapsed < 2.0


def test_fanout_replicates_option_instruments(capture_0405: Path, cyri113_csv: Path):
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with emulator(capture=capture_0405, trades=cyri113_csv, fanout=3,
                            close_when_done=True) as srv:
            instruments = (await http_get(srv, "get_instruments", currency="ETH")).json()["result"]
            async with Peer.connect(srv.ws_url) as peer:
                await peer.subscribe([f"ticker.ETH-9APR21-{k}-C.100ms" for k in (1950, 1951, 1952)]
                                     + ["trades.option.BTC.100ms"])
                await peer.read_until_closed()
            return instruments, peer.notifications()

    instruments, notes = run(scenario())
    names = {r["instrument_name"] for r in instruments}
    assert len(names) == 21 and {"ETH-9APR21-1951-C", "ETH-9APR21-1952-C"} <= names
    assert next(r for r in instruments if r["instrument_name"] == "ETH-9APR21-1952-C")["strike"] \
        == 1952.0
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    trades = []
    for n in notes:
        if n["params"]["channel"].startswith("ticker."):
            by_name[n["params"]["data"]["instrument_name"]].append(n["params"]["data"])
        else:
            trades.extend(n["params"]["data"])
    original = capture_tickers(capture_0405)["ETH-9APR21-1950-C"]
    assert by_name["ETH-9APR21-1950-C"] == original
    for copy in ("ETH-9APR21-1951-C", "ETH-9APR21-1952-C"):
        assert by_name[copy] == [{**d, "instrument_name": copy} for d in original]
    assert len(trades) == 3 * 277
    assert len({t["trade_id"] for t in trades}) == 3 * 277


# --- REST -----------------------------------------------------------------------------------------


def test_rest_instruments_book_summary_and_trade_paging(capture_0405: Path, cyri113_csv: Path):
    all_rows = csv_trades(cyri113_csv)
    rows = [r for r in all_rows if r["instrument_name"] == "BTC-17AUG26-62500-P"]
    assert len(rows) == 106
    option_ts = [int(r["timestamp"]) for r in all_rows if r["instrument_name"].endswith("-P")
                 or r["instrument_name"].endswith("-C")]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with emulator(capture=capture_0405, trades=cyri113_csv) as srv:
            # nothing is published before the replay runs
            early = await http_get(srv, "get_last_trades_by_instrument",
                                   instrument_name="BTC-17AUG26-62500-P")
            out["early"] = early.json()["result"]
            out["early_summary"] = (await http_get(srv, "get_book_summary_by_currency",
                                                   currency="ETH")).json()["result"]
            out["eth"] = (await http_get(srv, "get_instruments", currency="ETH",
                                         kind="option", expired="false")).json()
            out["btc_future"] = (await http_get(srv, "get_instruments", currency="BTC",
                                                kind="future")).json()["result"]
            async with Peer.connect(srv.ws_url) as peer:
                await peer.subscribe(["ticker.ETH-9APR21-1950-C.100ms"])
                await srv.finished.wait()
                out["summary"] = (await http_get(srv, "get_book_summary_by_currency",
                                                 currency="ETH", kind="option")).json()["result"]
                pages, start = [], 1
                while True:
                    resp = await http_get(srv, "get_last_trades_by_instrument",
                                          instrument_name="BTC-17AUG26-62500-P", start_seq=start,
                                          end_seq=10_000, count=25, sorting="asc")
                    assert resp.status_code == 200
                    page = resp.json()["result"]
                    pages.append(page)
                    if not page["has_more"]:
                        break
                    start = page["trades"][-1]["trade_seq"] + 1
                out["pages"] = pages
                out["newest"] = (await http_get(srv, "get_last_trades_by_instrument",
                                                instrument_name="BTC-17AUG26-62500-P")).json()
                out["ws_page"] = await peer.call("public/get_last_trades_by_instrument", {
                    "instrument_name": "BTC-17AUG26-62500-P", "start_seq": 26, "end_seq": 50,
                    "count": 25, "sorting": "asc"})
                out["ws_instruments"] = await peer.call("public/get_instruments",
                                                        {"currency": "ETH", "kind": "option"})
                out["by_time"] = (await http_get(
                    srv, "get_last_trades_by_currency_and_time", currency="BTC", kind="option",
                    start_timestamp=min(option_ts), end_timestamp=max(option_ts), count=1000,
                    sorting="asc")).json()["result"]
                out["errors"] = [
                    await http_get(srv, "get_last_trades_by_instrument",
                                   instrument_name="BTC-17AUG26-62500-P", count=2000),
                    await http_get(srv, "get_instruments"),
                    await http_get(srv, "no_such_method"),
                ]
        return out

    out = run(scenario())
    assert out["early"] == {"trades": [], "has_more": False} and out["early_summary"] == []

    eth = out["eth"]
    assert set(eth) == {"jsonrpc", "result", "usIn", "usOut", "usDiff", "testnet"}
    assert sorted(r["instrument_name"] for r in eth["result"]) == ETH_OPTIONS
    row = next(r for r in eth["result"] if r["instrument_name"] == "ETH-9APR21-1950-C")
    first_ticker = capture_tickers(capture_0405)["ETH-9APR21-1950-C"][0]
    assert row == {
        "instrument_name": "ETH-9APR21-1950-C", "instrument_id": row["instrument_id"],
        "kind": "option", "base_currency": "ETH",
        "quote_currency": "ETH", "settlement_currency": "ETH", "counter_currency": "USD",
        "instrument_type": "reversed", "price_index": "eth_usd", "is_active": True,
        "creation_timestamp": first_ticker["timestamp"], "tick_size": 0.0005, "tick_size_steps": [],
        "contract_size": 1.0, "min_trade_amount": 1.0,
        "maker_commission": 0.0003, "taker_commission": 0.0003, "block_trade_commission": 0.00025,
        "block_trade_min_trade_amount": 25, "block_trade_tick_size": 0.0001, "max_leverage": 1,
        "max_liquidation_commission": 0.0075,
        "expiration_timestamp": 1617955200000,  # 2021-04-09 08:00 UTC
        "settlement_period": "week",            # a Friday, not the month's last
        "strike": 1950.0, "option_type": "call",
    }
    assert len({r["instrument_id"] for r in eth["result"]}) == len(eth["result"])
    assert [r["instrument_name"] for r in out["btc_future"]] == ["BTC-PERPETUAL"]
    assert out["btc_future"][0]["expiration_timestamp"] == 32503708800000
    assert out["ws_instruments"]["result"] == eth["result"]

    last = {name: v[-1] for name, v in capture_tickers(capture_0405).items()}
    summary = {r["instrument_name"]: r for r in out["summary"]}
    assert sorted(summary) == ETH_OPTIONS
    for name, r in summary.items():
        t = last[name]
        assert (r["mark_price"], r["mark_iv"], r["open_interest"], r["underlying_price"],
                r["underlying_index"], r["bid_price"], r["ask_price"], r["last"],
                r["creation_timestamp"]) == (
            t["mark_price"], t["mark_iv"], t["open_interest"], t["underlying_price"],
            t["underlying_index"], t["best_bid_price"], t["best_ask_price"], t["last_price"],
            t["timestamp"])

    paged = [t for p in out["pages"] for t in p["trades"]]
    assert [len(p["trades"]) for p in out["pages"]] == [25, 25, 25, 25, 6]
    assert [t["trade_seq"] for t in paged] == list(range(1, 107))
    assert [t["trade_id"] for t in paged] == [r["id"] for r in rows]
    newest = out["newest"]["result"]
    assert newest["has_more"] is True
    assert [t["trade_seq"] for t in newest["trades"]] == list(range(106, 96, -1))
    assert out["ws_page"]["result"] == {"trades": out["pages"][1]["trades"], "has_more": False}
    assert len(out["by_time"]["trades"]) == 277 and out["by_time"]["has_more"] is False

    too_many, no_currency, unknown = out["errors"]
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == -32602
    assert no_currency.status_code == 400 and no_currency.json()["error"]["code"] == -32602
    assert unknown.status_code == 400 and unknown.json()["error"] == {
        "code": -32601, "message": "Method not found"}


def test_get_instruments_served_from_recorded_response(capture_0722: Path):
    recorded = {}
    with gzip.open(capture_0722, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "http_response":
                recorded[rec["url"].split("currency=")[1][:3]] = json.loads(rec["raw"])["result"]

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        async with emulator(capture=capture_0722) as srv:
            eth = (await http_get(srv, "get_instruments", currency="ETH", kind="option")).json()
            btc = (await http_get(srv, "get_instruments", currency="BTC")).json()
            expired = (await http_get(srv, "get_instruments", currency="BTC",
                                      expired="true")).json()
            return eth["result"], btc["result"], expired["result"]

    eth, btc, expired = run(scenario())
    assert eth == [r for r in recorded["ETH"] if r["kind"] == "option"] and len(eth) == 418
    assert btc == recorded["BTC"] and len(btc) == 398
    assert expired == []


def test_rest_errors_alternate_10028_and_http_429(capture_0405: Path):
    async def scenario() -> tuple[list[httpx.Response], dict[str, Any], httpx.Response]:
        async with emulator(capture=capture_0405, faults=Faults(rest_errors=1.0)) as srv:
            responses = [await http_get(srv, "get_instruments", currency="ETH") for _ in range(4)]
            async with Peer.connect(srv.ws_url) as peer:
                ws_reply = await peer.call("public/get_instruments", {"currency": "ETH"})
            async with httpx.AsyncClient() as client:
                stats = await client.get(srv.stats_url)  # never faulted
        return responses, ws_reply, stats

    responses, ws_reply, stats = run(scenario())
    assert [r.status_code for r in responses] == [400, 429, 400, 429]
    for r in responses:
        assert r.json()["error"] == {"code": 10028, "message": "too_many_requests"}
    assert ws_reply["error"] == {"code": 10028, "message": "too_many_requests"}
    assert stats.status_code == 200


# --- command line ---------------------------------------------------------------------------------


def test_cli_arguments_map_to_config(capture_0405: Path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(capture_0405), "--speed", "max", "--loop", "3", "--fanout", "2",
                              "--drop-every", "7", "--delay-ms", "1-3", "--refuse-channels",
                              "ETH-.*", "--malformed", "4", "--rest-errors", "0.5", "--seed", "9",
                              "--exit-when-done"])
    cfg = config_from_args(args)
    assert (cfg.speed, cfg.loop, cfg.fanout, cfg.close_when_done) == ("max", 3, 2, True)
    f = cfg.faults
    assert (f.seed, f.drop_every, f.delay_ms, f.refuse_channels, f.malformed, f.rest_errors) == (
        9, 7, (1.0, 3.0), "ETH-.*", 4, 0.5)
    assert config_from_args(parser.parse_args([str(capture_0405), "--refuse-channels", "0.25"])
                            ).faults.refuse_channels == 0.25


def test_cli_serves_and_exits_when_done(capture_0405: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector_daemon.emulator.server", str(capture_0405), "--port", "0",
         "--speed", "max", "--exit-when-done"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        ws_url = banner.split("ws ")[1].split()[0]

        async def scenario() -> int:
            async with Peer.connect(ws_url) as peer:
                await peer.subscribe(ETH_TICKERS)
                await peer.read_until_closed()
                return len(peer.notifications())

        received = run(scenario())
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert received == sum(len(v) for k, v in capture_tickers(capture_0405).items()
                           if k in ETH_OPTIONS)
    assert f"{received} notifications" in out and "replay finished" in out
