"""Every Deribit ticker and trade notification and every REST result of the kinds we consume in
../shared/data/real/deribit decodes, and each stored value equals its source field (nulls stay null).
The per-channel excerpts in tests/fixtures/deribit/ (real frames, named by their source capture)
and the inline frames run on any clone; the whole-capture tests need ../shared."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from collector_daemon.rows import QUOTES, TRADES
from collector_daemon.venues import Control, Data, Decoder, RejectedFrame, Request, Response
from collector_daemon.venues.deribit import messages as m
from collector_daemon.venues.deribit.protocol import DeribitProtocol

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deribit"

RECEIVE_US = 1_700_000_000_123_456
GREEKS = ("delta", "gamma", "vega", "theta", "rho")


def _frames(real: Path):
    """(source name, parsed JSON) of every WebSocket frame and REST body in the Deribit folder."""
    d = real / "deribit"
    for name in ("crypto-msg-parser_test-embedded_deribit_ws+rest_messages.jsonl",
                 "tardis-node_test-embedded_deribit_ws_messages.jsonl"):
        for i, line in enumerate((d / name).read_text().splitlines()):
            if line.strip():
                yield f"{name}:{i}", json.loads(line)
    for name in sorted(d.glob("cryptofeed_*.jsonl.gz")):
        with gzip.open(name, "rt") as fh:
            for i, line in enumerate(fh):
                rec = json.loads(line)
                if rec["dir"] in ("recv", "http_response") and rec["raw"]:
                    yield f"{name.name}:{i}", json.loads(rec["raw"])
    for name in sorted((d / "nautilus_test_data").glob("*.json")) + sorted(
            (d / "openbb_test_data").glob("*.json")) + sorted((d / "misc_rest_samples").glob("*.json")):
        yield name.name, json.loads(name.read_text())


def _check_quote(row: tuple, src: dict) -> None:
    got = dict(zip(QUOTES.columns, row))
    assert got["venue"] == "deribit"
    assert got["instrument_name"] == src["instrument_name"]
    assert got["exchange_ts"] == src["timestamp"] * 1000
    assert got["receive_ts"] == RECEIVE_US
    for col in ("best_bid_price", "best_bid_amount", "best_ask_price", "best_ask_amount",
                "mark_price", "mark_iv", "bid_iv", "ask_iv", "underlying_price", "underlying_index",
                "index_price", "open_interest", "last_price", "interest_rate", "state"):
        assert got[col] == src.get(col), col
        assert type(got[col]) is type(src.get(col)) or isinstance(src.get(col), int), col
    greeks = src.get("greeks") or {}
    for col in GREEKS:
        assert got[col] == greeks.get(col), col


def _check_trade(row: tuple, src: dict, source: str = "ws") -> None:
    got = dict(zip(TRADES.columns, row))
    assert got["exchange_ts"] == src["timestamp"] * 1000
    assert got["source"] == source
    for col in ("instrument_name", "trade_id", "trade_seq", "price", "amount", "direction", "iv",
                "mark_price", "index_price", "tick_direction", "liquidation", "block_trade_id"):
        assert got[col] == src.get(col), col


def test_every_ticker_and_trade_notification_decodes_exactly(real_data_dir: Path) -> None:
    proto = DeribitProtocol("ETH")
    tickers = trades = 0
    for source, msg in _frames(real_data_dir):
        if not isinstance(msg, dict) or msg.get("method") != "subscription":
            continue
        channel = msg["params"]["channel"]
        if not channel.startswith(("ticker.", "trades.")):
            with pytest.raises(RejectedFrame, match="unknown channel"):
                proto.decode(json.dumps(msg), RECEIVE_US)
            continue
        item = proto.decode(json.dumps(msg), RECEIVE_US)
        assert isinstance(item, Data), source
        data = msg["params"]["data"]
        if channel.startswith("ticker."):
            assert item.table is QUOTES
            _check_quote(item.rows[0], data)
            tickers += 1
        else:
            assert item.table is TRADES and len(item.rows) == len(data)
            for row, src in zip(item.rows, data):
                _check_trade(row, src)
                trades += 1
    # 273 + 89 ticker frames in the two cryptofeed captures, plus the embedded samples
    assert tickers >= 273 + 89 + 10
    assert trades >= 10


def test_rest_results_decode_exactly(real_data_dir: Path) -> None:
    counts = {"ticker": 0, "trades": 0, "instruments": 0, "book_summary": 0}
    for source, body in _frames(real_data_dir):
        result = body.get("result", body) if isinstance(body, dict) else body
        if isinstance(body, dict) and body.get("method"):
            continue
        if isinstance(result, dict) and "trades" in result:
            page = m.trades_page_decoder.decode(json.dumps(result))
            for trade, src in zip(page.trades, result["trades"], strict=True):
                _check_trade(trade.to_row(RECEIVE_US, "rest"), src, "rest")
                counts["trades"] += 1
        elif isinstance(result, list) and result and "trade_seq" in result[0]:
            for trade, src in zip(m.trades_decoder.decode(json.dumps(result)), result, strict=True):
                _check_trade(trade.to_row(RECEIVE_US, "rest"), src, "rest")
                counts["trades"] += 1
        elif isinstance(result, dict) and "best_bid_price" in result and "timestamp" in result:
            _check_quote(m.ticker_decoder.decode(json.dumps(result)).to_row(RECEIVE_US), result)
            counts["ticker"] += 1
        elif isinstance(result, list) and result and "expiration_timestamp" in result[0]:
            for inst, src in zip(m.instruments_decoder.decode(json.dumps(result)), result, strict=True):
                row = m.instrument_row(inst, None)
                assert row[1] == src["instrument_name"] and row[2] == src["kind"]
                assert row[7] == src.get("strike") and row[6] == src.get("option_type")
                exp = src.get("expiration_timestamp")
                assert row[8] == (None if exp is None else exp * 1000)
                counts["instruments"] += 1
        elif isinstance(result, list) and result and "open_interest" in result[0]:
            for summary, src in zip(m.book_summary_decoder.decode(json.dumps(result)), result, strict=True):
                assert summary.open_interest == src["open_interest"]
                assert summary.mark_price == src.get("mark_price")
                counts["book_summary"] += 1
    assert counts["trades"] >= 5 + 5 + 10 + 20
    assert counts["ticker"] >= 4          # public/ticker and get_order_book results
    assert counts["instruments"] >= 418 + 390 + 4
    assert counts["book_summary"] >= 4


def _fixture(channel: str) -> list[str]:
    """The frames of ``tests/fixtures/deribit/{channel}.{source}.jsonl`` (one file per channel)."""
    [path] = FIXTURES.glob(f"{channel}.*.jsonl")
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_fixture_frames_of_every_channel_decode_exactly() -> None:
    proto = DeribitProtocol("ETH")
    for frame in _fixture("ticker"):
        item = proto.decode(frame, RECEIVE_US)
        assert isinstance(item, Data) and item.table is QUOTES
        _check_quote(item.rows[0], json.loads(frame)["params"]["data"])
    for frame in _fixture("trades"):
        item = proto.decode(frame, RECEIVE_US)
        src = json.loads(frame)["params"]["data"]
        assert isinstance(item, Data) and item.table is TRADES and len(item.rows) == len(src) > 0
        for row, trade in zip(item.rows, src):
            _check_trade(row, trade)
    # a real subscribe result (cryptofeed sent it id 0, which our collector keeps for its
    # heartbeat answers, so the ack is matched here as our id 7 would be)
    [frame] = _fixture("subscribe_response")
    channels = json.loads(frame)["result"]
    ack = Response(7, channels, None)
    assert proto.acknowledged_channels(Request(7, "", (*channels, "ticker.NOPE.100ms")),
                                       [ack]) == channels


def test_heartbeat_response_and_rejections() -> None:
    proto = DeribitProtocol("ETH")
    item = proto.decode('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}', 1)
    assert isinstance(item, Control) and json.loads(item.reply)["method"] == "public/test"
    assert proto.decode('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}', 1) == Control(None)
    resp = proto.decode('{"jsonrpc":"2.0","id":7,"result":["ticker.X.100ms"],"usIn":1,"usOut":2}', 1)
    assert resp == Response(7, ["ticker.X.100ms"], None)
    request = Request(7, "", ("ticker.X.100ms", "ticker.Y.100ms"))
    assert proto.acknowledged_channels(request, [resp]) == ["ticker.X.100ms"]
    err = proto.decode('{"jsonrpc":"2.0","id":8,"error":{"code":10028,"message":"too_many_requests"}}', 1)
    assert err.error == {"code": 10028, "message": "too_many_requests"}
    base = {"instrument_name": "ETH-1", "timestamp": 1617644856302, "price": 1.0, "amount": 1.0,
            "direction": "buy", "trade_id": "ETH-1"}
    bad = [
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms","data":{"instrument_name":"X"',
        "not json",
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms","data":{"instrument_name":"X","timestamp":"abc"}}}',
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms","data":{"timestamp":1617644856302}}}',
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms","data":{"instrument_name":"X","timestamp":1617644856302,"mark_price":NaN}}}',
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms","data":{"instrument_name":"X","timestamp":1617644856302,"mark_price":1e999}}}',
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.option.ETH.100ms","data":[' + json.dumps({**base, "direction": "up"}) + "]}}",
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.option.ETH.100ms","data":[' + json.dumps({**base, "price": "1.0"}) + "]}}",
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"nope.X","data":{}}}',
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms","data":{"instrument_name":"X","timestamp":16176448}}}',
        "[1,2,3]",
    ]
    for frame in bad:
        with pytest.raises(RejectedFrame):
            proto.decode(frame, 1)


def test_subscribe_frames_stay_under_the_32kB_limit() -> None:
    proto = DeribitProtocol("ETH")
    names = [f"ETH-27DEC30-{10000 + i}-C" for i in range(1000)]
    channels = proto.channels_for(names)
    assert channels[0] == "trades.option.ETH.100ms" and channels[1] == f"ticker.{names[0]}.100ms"
    from collector_daemon.venues import IdSource
    ids = IdSource()
    for i in range(0, len(channels), proto.max_channels_per_subscribe):
        req = proto.subscribe_request(channels[i:i + proto.max_channels_per_subscribe], ids)
        assert len(req.frame.encode()) < 32_000
        assert json.loads(req.frame)["params"]["channels"] == list(req.channels)


def test_decode_accepts_bytes_as_text() -> None:
    frame = ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.ETH-1.100ms",'
             '"data":{"instrument_name":"ETH-1","timestamp":1617644856302,"mark_price":0.08}}}')
    proto = DeribitProtocol("ETH")
    assert proto.decode(frame.encode(), 1) == proto.decode(frame, 1)


def test_empty_trades_notification_is_data_without_rows() -> None:
    """Deribit may send ``"data":[]`` on a trades channel: no rows, never an error (the
    connection counts it as a message and as liveness of the stream)."""
    proto = DeribitProtocol("ETH")
    fast = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.option.ETH.100ms","data":[]}}'
    slow = '{"params":{"data":[],"channel":"trades.option.ETH.100ms"},"method":"subscription","jsonrpc":"2.0"}'
    for frame in (fast, slow):
        assert proto.decode(frame, 1) == Data(TRADES, [], "trades.option.ETH.100ms")
    with pytest.raises(RejectedFrame, match="without channel or data"):
        proto.decode('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.option.ETH.100ms"}}', 1)


def test_values_the_database_cannot_hold_are_rejected_at_decode() -> None:
    """trade_seq beyond bigint and names/ids too long for a btree key would fail a whole batch in
    the writer; they are rejected frames instead. The largest bigint still decodes."""
    proto = DeribitProtocol("ETH")
    trade = {"instrument_name": "ETH-1", "timestamp": 1617644856302, "price": 1.0, "amount": 1.0,
             "direction": "buy", "trade_id": "ETH-1"}

    def frame(**over) -> str:
        return ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.option.ETH.100ms",'
                f'"data":[{json.dumps({**trade, **over})}]}}}}')

    row = proto.decode(frame(trade_seq=2**63 - 1), RECEIVE_US).rows[0]
    assert row[TRADES.columns.index("trade_seq")] == 2**63 - 1
    assert proto.decode(frame(trade_id="T" * 128), RECEIVE_US).rows[0][2] == "T" * 128
    for over in ({"trade_seq": 2**63}, {"trade_id": "T" * 129}, {"instrument_name": "E" * 129},
                 {"block_trade_id": "B" * 129}, {"liquidation": "M" * 129}):
        with pytest.raises(RejectedFrame, match="decode error"):
            proto.decode(frame(**over), RECEIVE_US)
    ticker = ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.ETH-1.100ms","data":'
              '{"instrument_name":"ETH-1","timestamp":1617644856302,"underlying_index":"%s"}}}')
    assert proto.decode(ticker % ("I" * 128), RECEIVE_US).rows[0][13] == "I" * 128
    with pytest.raises(RejectedFrame, match="decode error"):
        proto.decode(ticker % ("I" * 129), RECEIVE_US)


def test_decode_read_gives_what_decoding_frame_by_frame_gives() -> None:
    """One read of every kind of frame: the fast path (tickers and trades in Deribit's key order)
    and the general path (odd key order, heartbeats, responses, bad, binary, oversized frames,
    data of a channel not accepted, a ticker whose instrument is not its channel's) give the same
    batch as the frame-by-frame default (``Decoder.decode_read``): rows per table in arrival
    order, exact values, the same rejection reasons, controls in order."""
    proto = DeribitProtocol("ETH")
    tickers, trades = _fixture("ticker"), _fixture("trades")
    data = [json.loads(f)["params"]["data"] for f in tickers]
    channels = [json.loads(f)["params"]["channel"] for f in tickers]
    reordered = json.dumps({"params": {"data": data[0], "channel": channels[0]}, "method": "subscription",
                            "jsonrpc": "2.0"})
    stranger = tickers[1].replace(channels[1], "ticker.ETH-NOPE.raw")       # accepted, wrong instrument
    unknown = tickers[2].replace(channels[2], channels[2].replace(".raw", ".100ms"))   # not accepted
    empty_trades = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"trades.option.ETH.100ms","data":[]}}'
    frames = [tickers[0], trades[0], reordered, '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}',
              '{"jsonrpc":"2.0","id":7,"result":["ticker.X.100ms"]}', "not json", b"\xffbinary",
              tickers[1] + " " * 20_000, stranger, unknown, empty_trades, *tickers[1:], *trades[1:]]
    trade_channels = {json.loads(f)["params"]["channel"] for f in trades}
    accepting = {*channels, *trade_channels, "trades.option.ETH.100ms", "ticker.ETH-NOPE.raw"}
    max_chars = 10_000
    fast = proto.decode_read(frames, RECEIVE_US, accepting, max_chars)
    slow = Decoder.decode_read(proto, frames, RECEIVE_US, accepting, max_chars)
    assert fast.tables == slow.tables
    assert (fast.messages, fast.rejects, fast.controls) == (slow.messages, slow.rejects, slow.controls)
    quotes, rows = fast.tables["quotes"]
    assert quotes is QUOTES and len(rows) == 4
    for row, src in zip(rows, [data[0], data[0], data[1], data[2]], strict=True):
        _check_quote(row, src)
    assert fast.tables["trades"] == (TRADES, [r for f in trades for r in proto.decode(f, RECEIVE_US).rows])
    assert fast.messages == 4 + len(trades) + 1
    assert [reason.split(":")[0] for _, reason in fast.rejects] == [
        "decode error", "binary frame", "oversized frame", f"ticker of '{data[1]['instrument_name']}' on channel 'ticker.ETH-NOPE.raw'",
        "data on a channel not subscribed"]
    assert fast.rejects[1] == ("\\xffbinary", "binary frame")
    assert fast.rejects[4] == (unknown, f"data on a channel not subscribed: ticker.{data[2]['instrument_name']}.100ms")
    assert [type(c) for c in fast.controls] == [Control, Response]
