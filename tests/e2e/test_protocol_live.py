"""The Deribit protocol over a real socket: the collector against the emulator on loopback, into a
real TimescaleDB. Odd-but-valid frames, a handler bug on one frame, heartbeats over several
cycles (answered, and not answered), subscribe splitting past 250 channels, channels handed to a
connection while it opens, and the staleness watchdog's warn and reconnect paths.

What the emulator received is observed by wrapping its venue's request handler (a pass-through
spy on ``EmulatorServer.venue.handle_message``): the test sees every JSON-RPC request exactly as
it came over the socket, independently of what the collector says it sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from aiolimiter import AsyncLimiter

from collector_daemon import connection as connection_module
from collector_daemon.connection import Connection
from collector_daemon.daemon import Collector, Summary
from collector_daemon.emulator.replay import Faults
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.metrics import Stats
from collector_daemon.pipeline import Pipeline
from collector_daemon.rows import TRADES
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues import Control
from collector_daemon.venues.deribit.protocol import DeribitProtocol, ticker_channel, trades_channel
from faults.test_zero_loss import assert_quotes_match_sent
from replay_helpers import CAPTURE, assert_quote_equals_frame, capture_tickers, db_quotes, settings_for

pytestmark = pytest.mark.realdata

ETH_OPTIONS = sorted([
    "ETH-16APR21-1400-P", "ETH-16APR21-1600-C", "ETH-23APR21-2000-C", "ETH-24SEP21-320-P",
    "ETH-30APR21-2240-P", "ETH-6APR21-2400-P", "ETH-9APR21-1950-C",
])
TRADES_ETH = trades_channel("ETH")


def rows(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


class Requests:
    """Spy on the JSON-RPC requests the emulator received and what it answered: ``seen`` holds
    ``(client id, parsed request)``, ``answers`` request id -> parsed response; it also counts the
    heartbeat ``test_request`` frames the emulator sent."""

    def __init__(self, server: EmulatorServer) -> None:
        self.seen: list[tuple[int, dict]] = []
        self.answers: dict[int, dict] = {}
        self.test_requests_sent = 0
        handle, heartbeat = server.venue.handle_message, server.venue.heartbeat_frame

        def handle_message(session, message, received_us):
            request = json.loads(message)
            self.seen.append((session.id, request))
            replies = handle(session, message, received_us)
            for reply in replies:
                self.answers[request.get("id")] = json.loads(reply)
            return replies

        def heartbeat_frame():
            self.test_requests_sent += 1
            return heartbeat()

        server.venue.handle_message = handle_message
        server.venue.heartbeat_frame = heartbeat_frame

    def of(self, method: str) -> list[tuple[int, dict]]:
        return [(c, r) for c, r in self.seen if r.get("method") == method]


async def collect(dsn: str, tmp_path: Path, config: EmulatorConfig, *, protocol: DeribitProtocol | None = None,
                  stop_when=None, **settings) -> tuple[Summary, dict, Requests]:
    """Run a Collector against an emulator started from ``config``; returns the collector's summary,
    the emulator's stats and the requests it received. Stops at the end of the replay, or when the
    coroutine function ``stop_when(collector)`` returns."""
    server = EmulatorServer(config)
    spy = Requests(server)
    await server.start(host="127.0.0.1", port=0)
    try:
        collector = Collector(settings_for(dsn, tmp_path, **settings), ws_url=server.ws_url,
                              rest_url=server.rest_url, stop_on_replay_end=stop_when is None)
        if protocol is not None:
            collector.protocol = protocol
        run = asyncio.create_task(collector.run())
        if stop_when is not None:
            await asyncio.wait_for(stop_when(collector), 60)
            collector.request_stop()
        summary = await asyncio.wait_for(run, 120)
        return summary, server.stats(), spy
    finally:
        await server.stop()


def ticker_frames(stats: dict) -> dict[str, int]:
    """The emulator's ticker frames per instrument, over all connections."""
    return stats["totals"]["frames_by_instrument"]["ticker"]


# --- odd but valid frames, and a bug while handling one frame --------------------------------------

_T0 = 1617644856302 - 10_000       # 10 s before the capture's first ticker: a key of its own


def _note(channel: str, data, reorder: bool = False) -> str:
    if reorder:   # same content, keys in another order: misses the decoder's fast path
        return json.dumps({"params": {"data": data, "channel": channel}, "method": "subscription",
                           "jsonrpc": "2.0"})
    return json.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}},
                      separators=(",", ":"))


def _trade(trade_id: str, instrument: str = "ETH-9APR21-1950-C", **over) -> dict:
    return {"trade_id": trade_id, "instrument_name": instrument, "timestamp": _T0, "price": 0.05,
            "amount": 1.0, "direction": "buy", **over}


#: A NUL inside a string decodes fine; PostgreSQL refuses it (22021), so the writer moves that
#: one row to rejected_messages (connection 'writer') and writes the rest of its batch.
NUL_TRADE = _trade("ETH-odd-7\u0000x")


def odd_frames() -> tuple[list[str], list[dict], list[dict], dict[str, str]]:
    """(frames to inject, tickers that must land, trades that must land, {frame: rejection reason
    prefix} of the frames the reader must reject)."""
    rnd = random.Random(1)
    null_ticker = {"instrument_name": "ETH-9APR21-1950-C", "timestamp": _T0, "best_bid_price": None,
                   "best_ask_price": None, "mark_price": None, "greeks": None, "state": None}
    extra_ticker = {"instrument_name": "ETH-6APR21-2400-P", "timestamp": _T0 + 1, "mark_price": 0.01,
                    "stats": {"volume": 1.0, "high": None}, "estimated_delivery_price": 2100.5,
                    "greeks": {"delta": -0.1}, "combo_state": "whatever"}
    good_trades = [
        _trade("ETH-odd-1", trade_seq=None, iv=None),                              # nulls stay null
        _trade("ETH-odd-2", "ETH-16APR21-1400-P", liquidation="M", block_trade_id="BLOCK-1"),
        _trade("ETH-odd-3", "ETH-23APR21-2000-C", tick_direction=3, extra_field=[1, 2]),
        _trade("ETH-odd-4", "ETH-ΩMEGA-1-C"),                                         # non-ASCII name
    ]
    long_name = "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(3000))
    rejected = {
        _note(TRADES_ETH, [_trade("ETH-odd-5", trade_seq=2**63)]): "decode error",
        _note(TRADES_ETH, [_trade("ETH-odd-6", long_name)]): "decode error",
        _note(TRADES_ETH, [_trade("x" * 300)]): "decode error",
    }
    frames = [
        _note(TRADES_ETH, []),                                  # the reported crash
        _note(TRADES_ETH, [], reorder=True),
        '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}',
        '{"jsonrpc":"2.0","id":987654,"result":["ticker.ETH-9APR21-1950-C.100ms"]}',   # nobody asked
        '{"jsonrpc":"2.0","id":0,"result":{"version":"1.2.26"}}',
        _note(ticker_channel("ETH-9APR21-1950-C"), null_ticker),
        _note(ticker_channel("ETH-6APR21-2400-P"), extra_ticker, reorder=True),
        _note(TRADES_ETH, good_trades[:2]),
        _note(TRADES_ETH, good_trades[2:] + good_trades[2:3], reorder=True),            # a repeat inside
        _note(TRADES_ETH, [NUL_TRADE]),
        *rejected,
    ]
    return frames, [null_ticker, extra_ticker], good_trades, rejected


def test_odd_frames_never_end_the_connection(migrated_db_url, tmp_path, real_data_dir, caplog):
    frames, tickers, trades, rejected = odd_frames()
    caplog.set_level(logging.WARNING, "collector_daemon")
    summary, stats, _ = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, close_when_done=True,
                                                  faults=Faults(seed=9, inject=tuple(frames)))))
    assert stats["totals"]["malformed_sent"] == len(frames)     # every odd frame went out
    assert summary.reconnects == 0 and "unexpected error" not in caplog.text
    # the capture's tickers plus the two odd ones, values as sent (nulls null, extras ignored)
    expected = capture_tickers(real_data_dir / CAPTURE, "ETH")
    stored = db_quotes(migrated_db_url)
    assert len(stored) == len(expected) + 2
    for data in [*expected.values(), *tickers]:
        assert_quote_equals_frame(stored[(data["instrument_name"], data["timestamp"])], data)
    assert_quotes_match_sent(migrated_db_url, ticker_frames(stats), Counter(t["instrument_name"] for t in tickers))
    got = {r[0]: r[1:] for r in rows(migrated_db_url,
           "SELECT trade_id, instrument_name, trade_seq, iv, liquidation, block_trade_id, tick_direction, "
           "source FROM trades")}
    assert got == {t["trade_id"]: (t["instrument_name"], t.get("trade_seq"), t.get("iv"), t.get("liquidation"),
                                   t.get("block_trade_id"), t.get("tick_direction"), "ws") for t in trades}
    # the two empty trades notifications are messages without rows (5 good rows + the NUL one)
    assert summary.rows_received["trades"] == 6
    assert summary.messages == sum(stats["totals"]["by_channel"].values()) + 7
    reasons = rows(migrated_db_url, "SELECT connection_id, raw, reason FROM rejected_messages")
    assert summary.rejected == len(rejected) == len(reasons) - 1
    for connection, raw, reason in reasons:
        if connection == "writer":
            assert "ETH-odd-7\\x00x" in raw and reason.startswith("database refused trades row"), reason
            continue
        match = next(f for f in rejected if f.startswith(raw))
        assert reason.startswith(rejected[match]), reason


def test_a_bug_on_one_frame_rejects_that_frame_and_reading_goes_on(migrated_db_url, tmp_path, real_data_dir,
                                                                   caplog):
    """An observer that raises (a stand-in for any bug in frame handling) on one trades frame: the
    frame goes to rejected_messages with the exception, the traceback is logged, the connection
    stays up and every other frame lands. A bug while connecting is a disconnect, not a dead task."""
    poison = _trade("ETH-poison")
    frames = (_note(TRADES_ETH, [_trade("ETH-fine-1")]), _note(TRADES_ETH, [poison]),
              _note(TRADES_ETH, [_trade("ETH-fine-2")]))

    def observer(batch: list[tuple]) -> None:
        if batch[0][TRADES.columns.index("trade_id")] == "ETH-poison":
            raise ZeroDivisionError("observer bug")

    class FlakyOpen(DeribitProtocol):
        """Fails the first connection's setup with an unexpected error."""

        opened = 0

        def open_requests(self, next_id):
            FlakyOpen.opened += 1
            if FlakyOpen.opened == 1:
                raise KeyError("setup bug")
            return super().open_requests(next_id)

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, close_when_done=True,
                                               faults=Faults(seed=3, inject=frames)))
        await server.start(host="127.0.0.1", port=0)
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        pipeline = Pipeline(writer.write, flush_interval_s=0.2)
        pipeline.start()
        stats = Stats(venue="deribit")
        conn = Connection(FlakyOpen("ETH"), server.ws_url, "odd-0", pipeline, stats, AsyncLimiter(10, 1),
                          backoff_min_s=0.05, backoff_max_s=0.1, stop_on_replay_end=True,
                          observers={TRADES.name: observer})
        await conn.set_channels([TRADES_ETH, *map(ticker_channel, ETH_OPTIONS)])
        try:
            await asyncio.wait_for(conn.run(), 60)
        finally:
            await pipeline.close()
            await writer.close()
            await server.stop()
        return stats, server.stats()

    caplog.set_level(logging.ERROR, "collector_daemon")
    stats, sent = asyncio.run(scenario())
    assert FlakyOpen.opened == 2 and stats.reconnects == 1
    errors = [r for r in caplog.records if r.name == "collector_daemon.connection"]
    assert [type(r.exc_info[1]) for r in errors] == [KeyError, ZeroDivisionError]   # tracebacks logged
    (reason, raw), = rows(migrated_db_url, "SELECT reason, raw FROM rejected_messages")
    assert reason == "internal error: ZeroDivisionError: observer bug" and "ETH-poison" in raw
    assert {r[0] for r in rows(migrated_db_url, "SELECT trade_id FROM trades")} == {"ETH-fine-1", "ETH-fine-2"}
    events = rows(migrated_db_url, "SELECT event, reason FROM connection_events ORDER BY event_id")
    assert events[:2] == [("connect", None), ("disconnect", "KeyError: 'setup bug'")]
    assert events[-1] == ("disconnect", "replay finished")
    assert_quotes_match_sent(migrated_db_url, ticker_frames(sent))


def test_a_reconcile_during_the_socket_setup_keeps_its_channels_accepted(migrated_db_url, tmp_path,
                                                                            real_data_dir):
    """The universe loop may reconcile a new socket while its setup (set_heartbeat) is under
    way. What it subscribed stays accepted: the setup used to clear the subscription state
    after its own answers, so a subscribe sent meanwhile and acknowledged after the clear left
    its channels in ``subscribed`` but out of ``_accepting``: every frame of theirs rejected
    until a reconnect (seen in benchmarks/ingest.py under load: 235 instruments' data in
    rejected_messages for a whole run). The interleaving is forced: once set_heartbeat is
    answered, a reconcile runs (and is given time to send whatever it sends) before the setup
    goes on; now it waits for the setup, which then subscribes everything desired."""
    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, close_when_done=True))
        await server.start(host="127.0.0.1", port=0)
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        pipeline = Pipeline(writer.write, flush_interval_s=0.2)
        pipeline.start()
        stats = Stats(venue="deribit")
        conn = Connection(DeribitProtocol("ETH"), server.ws_url, "setup-race-0", pipeline, stats,
                          AsyncLimiter(10, 1), backoff_min_s=0.05, backoff_max_s=0.1,
                          stop_on_replay_end=True)
        await conn.set_channels([TRADES_ETH, *map(ticker_channel, ETH_OPTIONS)])
        request, raced = conn._request, []

        async def setup_then_race(ws, req):
            responses = await request(ws, req)
            if "public/set_heartbeat" in req.frame:
                raced.append(asyncio.create_task(conn.reconcile()))   # the universe loop's
                await asyncio.sleep(0.2)
            return responses

        conn._request = setup_then_race
        try:
            await asyncio.wait_for(conn.run(), 60)
        finally:
            await pipeline.close()
            await writer.close()
            await server.stop()
        return stats, server.stats(), raced

    stats, sent, raced = asyncio.run(scenario())
    assert len(raced) == 1 and raced[0].done()
    assert stats.rejected == 0 and stats.reconnects == 0
    assert rows(migrated_db_url, "SELECT count(*) FROM rejected_messages") == [(0,)]
    assert sum(ticker_frames(sent).values()) > 0
    assert_quotes_match_sent(migrated_db_url, ticker_frames(sent))


# --- heartbeats over the socket --------------------------------------------------------------------

HEARTBEAT_UNIT = 0.05    # the emulator's wall seconds per heartbeat second: 10 s -> 0.5 s


def test_heartbeats_are_set_to_10s_and_answered_for_many_cycles(migrated_db_url, tmp_path, real_data_dir):
    summary, stats, spy = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, speed=10,
                                                  close_when_done=True, heartbeat_unit=HEARTBEAT_UNIT)))
    assert [r["params"] for _, r in spy.of("public/set_heartbeat")] == [{"interval": 10}]
    cycles = spy.test_requests_sent
    answers = len(spy.of("public/test"))
    # ~12 s of replay at 0.5 s per cycle; each answered (the last may be in flight at the close)
    assert cycles >= 15 and answers in (cycles, cycles - 1), (cycles, answers)
    (client,) = stats["clients"]
    assert (client["close_code"], client["close_reason"]) == (1000, "replay finished")
    assert summary.reconnects == 0
    assert rows(migrated_db_url, "SELECT event, reason FROM connection_events ORDER BY event_id") == [
        ("connect", None), ("subscribed", None), ("disconnect", "replay finished")]
    assert_quotes_match_sent(migrated_db_url, ticker_frames(stats))


class DeafProtocol(DeribitProtocol):
    """A collector that never answers test_request (what a stuck event loop looks like to Deribit)."""

    def decode(self, frame, receive_us):
        item = super().decode(frame, receive_us)
        return Control(None) if type(item) is Control else item


def test_unanswered_heartbeats_close_4000_and_the_collector_reconnects(migrated_db_url, tmp_path, real_data_dir):
    summary, stats, spy = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, speed=10,
                                                  close_when_done=True, heartbeat_unit=HEARTBEAT_UNIT),
        protocol=DeafProtocol("ETH")))
    closes = [(c["close_code"], c["close_reason"]) for c in stats["clients"]]
    assert len(closes) >= 4 and set(closes[:-1]) == {(4000, "heartbeat close")}
    assert closes[-1] == (1000, "replay finished")
    assert spy.of("public/test") == []
    # every connection set its heartbeat again, once (the last one may be closed with "replay
    # finished" as it connects, before its set_heartbeat)
    set_by = Counter(c for c, _ in spy.of("public/set_heartbeat"))
    assert set(set_by.values()) == {1}
    assert set(range(1, len(closes))) <= set(set_by) <= set(range(1, len(closes) + 1))
    assert summary.reconnects == len(closes) - 1
    events = rows(migrated_db_url, "SELECT event, reason, window_start, window_end FROM connection_events "
                  "ORDER BY event_id")
    disconnects = [r for e, r, _, _ in events if e == "disconnect"]
    assert disconnects == ["closed: code 4000 heartbeat close"] * (len(closes) - 1) \
        + ["replay finished"]
    # one subscribe ack per connection (the last may be closed before its ack, as above); every
    # ack after the first closes the outage window opened by the disconnect before it
    acks = [(s, e) for ev, _, s, e in events if ev == "subscribed"]
    assert len(closes) - 1 <= len(acks) <= len(closes) and acks[0] == (None, None)
    windows = acks[1:]
    assert all(s is not None and s < e for s, e in windows)
    assert_quotes_match_sent(migrated_db_url, ticker_frames(stats))


# --- subscribe splitting ---------------------------------------------------------------------------

def test_281_channels_are_subscribed_in_frames_of_at_most_250(migrated_db_url, tmp_path, real_data_dir):
    """fanout 40: 7 ETH options x 40 = 280 tickers + the trades channel, top_n=all."""
    summary, stats, spy = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, fanout=40,
                                                  close_when_done=True)))
    subscribes = [r for _, r in spy.of("public/subscribe")]
    requests = [r["params"]["channels"] for r in subscribes]
    assert [len(c) for c in requests] == [250, 31]
    assert [spy.answers[r["id"]]["result"] for r in subscribes] == requests   # the emulator took all
    requested = [c for chunk in requests for c in chunk]
    assert len(requested) == len(set(requested)) == 281 and requested[0] == TRADES_ETH
    instruments = {c.split(".")[1] for c in requested[1:]}
    assert len(instruments) == 280 and set(ETH_OPTIONS) <= instruments
    # the collector's record of each ack: the same two requests, everything confirmed, nothing refused
    acks = rows(migrated_db_url, "SELECT channels, refused_channels FROM connection_events "
                "WHERE event = 'subscribed' ORDER BY event_id")
    assert [(sorted(c), r) for c, r in acks] == [(sorted(chunk), None) for chunk in requests]
    sent = stats["totals"]["frames_by_instrument"]["ticker"]
    assert set(sent) == instruments and min(sent.values()) > 0    # every instrument got data ...
    assert_quotes_match_sent(migrated_db_url, ticker_frames(stats))               # ... and all of it landed
    assert summary.rows_written["quotes"] == sum(sent.values()) == 40 * len(
        capture_tickers(real_data_dir / CAPTURE, "ETH"))


# --- channels handed over while the connection opens ----------------------------------------------

def test_channels_handed_over_while_the_connection_opens_are_subscribed_and_all_their_data_lands(
        migrated_db_url, tmp_path, real_data_dir):
    """The emulator holds back its answer to ``public/set_heartbeat`` for 0.5 s, and 281 channels
    (two subscribe frames, paced one per second) are handed to the connection while it waits, as
    the universe and sharding reconcile does. The channels subscribed before the answer used to be
    forgotten when it came (their data rejected as "not subscribed" until re-requested: 215,208
    frames in a benchmark run). Now: subscribed once, after the answer, every frame stored."""
    hold_s = 0.5

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, fanout=40, speed=20,
                                               close_when_done=True))
        spy = Requests(server)
        handle = server.venue.handle_message
        asked = asyncio.Event()

        def slow_heartbeat_answer(session, message, received_us):
            replies = handle(session, message, received_us)
            if json.loads(message).get("method") != "public/set_heartbeat":
                return replies
            asked.set()
            loop = asyncio.get_running_loop()
            loop.call_later(hold_s, lambda: [loop.create_task(session.ws.send(r)) for r in replies])
            return []

        server.venue.handle_message = slow_heartbeat_answer
        await server.start(host="127.0.0.1", port=0)
        instruments = sorted(i["instrument_name"] for i in server.venue.rest.get_instruments(
            {"currency": "ETH", "kind": "option"}))
        channels = [TRADES_ETH, *map(ticker_channel, instruments)]
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        pipeline = Pipeline(writer.write, flush_interval_s=0.2)
        pipeline.start()
        stats = Stats(venue="deribit")
        conn = Connection(DeribitProtocol("ETH"), server.ws_url, "opening-0", pipeline, stats,
                          AsyncLimiter(1, 1.0), stop_on_replay_end=True)
        try:
            run = asyncio.create_task(conn.run())
            await asyncio.wait_for(asked.wait(), 10)         # the open request is unanswered
            assert not conn.subscribed
            await conn.set_channels(channels)
            await asyncio.wait_for(run, 60)
        finally:
            await pipeline.close()
            await writer.close()
            await server.stop()
        return channels, stats, server.stats(), spy

    channels, stats, sent, spy = asyncio.run(scenario())
    assert len(channels) == 281 and stats.rejected == 0
    assert rows(migrated_db_url, "SELECT count(*) FROM rejected_messages") == [(0,)]
    # each channel requested once, after the heartbeat was set; all of them confirmed
    methods = [r["method"] for _, r in spy.seen if r["method"] != "public/test"]
    assert methods == ["public/set_heartbeat", "public/subscribe", "public/subscribe"]
    requested = [c for _, r in spy.of("public/subscribe") for c in r["params"]["channels"]]
    assert sorted(requested) == sorted(channels)
    acks = rows(migrated_db_url, "SELECT channels, refused_channels FROM connection_events "
                "WHERE event = 'subscribed' ORDER BY event_id")
    assert sorted(c for chunk, _ in acks for c in chunk) == sorted(channels)
    assert [r for _, r in acks] == [None, None]
    # every ticker frame the emulator sent is stored, for all 280 instruments
    by_instrument = ticker_frames(sent)
    assert len(by_instrument) == 280 and min(by_instrument.values()) > 0
    assert_quotes_match_sent(migrated_db_url, by_instrument)
    assert stats.messages == sum(sent["totals"]["by_channel"].values())


# --- the staleness watchdog ------------------------------------------------------------------------

def test_watchdog_warns_then_reconnects_when_tickers_stop_but_the_socket_lives(
        migrated_db_url, tmp_path, real_data_dir, caplog):
    """Speed 10 (an ETH ticker at least every 0.3 s), then the replay ends and the socket stays open
    with heartbeats every 0.2 s: no frame-silence, only the quotes stream goes quiet. The quotes
    warn limit (1 s) logs, the quotes reconnect limit (2.5 s) reconnects; trades (never any on this
    capture) only warn. Nothing fires while tickers flow."""
    warn_s, reconnect_s, check_s = 1.0, 2.5, 1.0

    async def until_watchdog_reconnected(collector: Collector) -> None:
        # stats.reconnects counts once the watchdog's disconnect is recorded; watchdog_reconnects
        # counts when the close starts, and a stop during that close would be recorded as "shutdown"
        while not collector.connections or collector.connections[0].watchdog_reconnects < 1 \
                or collector.stats.reconnects < 1:
            await asyncio.sleep(0.05)

    caplog.set_level(logging.WARNING, "collector_daemon.connection")
    summary, stats, _ = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, speed=10, heartbeat_unit=0.02),
        stop_when=until_watchdog_reconnected, silence_reconnect_s=5.0, quotes_stale_warn_s=warn_s,
        quotes_stale_reconnect_s=reconnect_s, trades_stale_warn_s=warn_s))
    finished = stats["replay"]["finished_at"]          # wall time of the last ticker sent
    assert stats["replay"]["state"] == "finished"
    events = rows(migrated_db_url, "SELECT event, extract(epoch FROM event_ts)::float8, reason "
                  "FROM connection_events ORDER BY event_id")
    disconnects = [(ts, reason) for e, ts, reason in events if e == "disconnect"]
    assert len(disconnects) == 2 and disconnects[1][1] == "shutdown"
    (ts, reason) = disconnects[0]                       # one watchdog reconnect, after the data stopped
    assert reason.startswith("watchdog: no quotes data for "), reason
    assert finished + reconnect_s <= ts <= finished + reconnect_s + check_s + 0.5, (ts - finished)
    assert summary.reconnects == 1
    warnings = [(r.created, r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    quotes_warn = [t for t, msg in warnings if re.search(r": no quotes data for \d+ s$", msg)]
    trades_warn = [t for t, msg in warnings if ": no trades data for " in msg]
    assert quotes_warn and finished + warn_s <= quotes_warn[0] < ts
    assert trades_warn                                  # warned, yet never a reconnect for trades
    assert_quotes_match_sent(migrated_db_url, ticker_frames(stats))


# --- the socket's receive buffer -------------------------------------------------------------------

@pytest.mark.parametrize("recv_buffer_bytes", [65_536, 0])
def test_websocket_receive_buffer_is_fixed_unless_zero(migrated_db_url, tmp_path, real_data_dir,
                                                       recv_buffer_bytes, monkeypatch):
    """TICKVAULT_WS_RECV_BUFFER_BYTES: the socket picows connects is ours, with SO_RCVBUF set
    before connecting (Linux reports twice the value); 0 = picows's own socket (autotuned)."""
    made: list[socket.socket] = []
    real_factory = connection_module.receive_buffer_socket_factory

    def spying_factory(n: int):
        inner = real_factory(n)

        async def factory(url):
            sock = await inner(url)
            made.append(sock)
            return sock
        return factory

    monkeypatch.setattr(connection_module, "receive_buffer_socket_factory", spying_factory)
    seen: list[tuple] = []

    async def until_subscribed(collector: Collector) -> None:
        while not collector.connections or collector.stats.messages < 10:
            await asyncio.sleep(0.05)
        seen.extend((s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), s.getpeername()[1])
                    for s in made)
        seen.append(urlsplit(collector.connections[0].url).port)

    summary, _, _ = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, speed=10),
        stop_when=until_subscribed, ws_recv_buffer_bytes=recv_buffer_bytes))
    port = seen[-1]
    assert seen[:-1] == ([(2 * recv_buffer_bytes, port)] if recv_buffer_bytes else [])
    assert summary.rows_written.get("quotes", 0) > 0


# --- a stop while data flows --------------------------------------------------------------------

def test_stop_at_full_speed_keeps_every_frame_already_sent(migrated_db_url, tmp_path, real_data_dir):
    """A stop while the emulator sends as fast as the collector reads (20 copies of each option,
    40 loops): the collector unsubscribes and reads until the acks before it closes, so every
    ticker the emulator sent, the frames in flight at the stop included, is stored once. (Closing
    at once lost the frames in flight: 20 quotes, one fanned-out frame, in a CI-like run of
    test_mainjob's outage test.)"""

    async def until_flowing(collector: Collector) -> None:
        while collector.stats.messages < 3_000:
            await asyncio.sleep(0.005)

    summary, stats, spy = asyncio.run(collect(
        migrated_db_url, tmp_path, EmulatorConfig(capture=real_data_dir / CAPTURE, loop=40, fanout=20),
        stop_when=until_flowing))
    unsubscribed = [c for _, r in spy.of("public/unsubscribe") for c in r["params"]["channels"]]
    subscribed = [c for _, r in spy.of("public/subscribe") for c in r["params"]["channels"]]
    assert sorted(unsubscribed) == sorted(subscribed)              # everything, once, at the stop
    sent = ticker_frames(stats)
    whole_replay = 40 * 20 * len(capture_tickers(real_data_dir / CAPTURE, "ETH"))
    assert 3_000 < sum(sent.values()) < whole_replay / 2          # stopped mid-stream
    assert_quotes_match_sent(migrated_db_url, sent)
    assert summary.rows_written["quotes"] == sum(sent.values())
