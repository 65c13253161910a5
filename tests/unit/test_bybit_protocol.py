"""Bybit v5 protocol and decoder on real frames (tests/fixtures/bybit, sources in its README)."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

from collector_daemon.venues import Control, Data, IdSource, RejectedFrame, Response, get_venue
from collector_daemon.venues.bybit import messages as m
from collector_daemon.venues.bybit.protocol import (
    MAX_ARGS_CHARS, BybitDecoder, BybitProtocol, topic_of,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bybit"
CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"


def frames(category: str | None = None, prefix: str = "") -> list[str]:
    out = []
    for line in (FIXTURES / "public_frames.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if (category is None or rec["category"] == category) and json.loads(rec["raw"]).get("topic", "").startswith(prefix):
            out.append(rec["raw"])
    return out


def row_dict(table, row: tuple) -> dict:
    return dict(zip(table.columns, row))


def expected_ticker_value(column: str, state: dict):
    """The value a row must hold for ``column`` given the Bybit quote ``state``."""
    names = [f for f, c in m.TICKER_NUMERIC.items() if c == column and f in state]
    names += [f for f, c in m.TICKER_TEXT.items() if c == column and f in state]
    if not names:
        return None
    value = state[names[0]]
    return value if value != "" else None


def test_linear_snapshot_then_deltas_merge_per_symbol() -> None:
    raws = frames("linear", "tickers.")
    dec = BybitDecoder("linear")
    state: dict = {}
    for raw in raws:
        msg = json.loads(raw)
        item = dec.decode(raw, 123)
        assert isinstance(item, Data) and item.table is m.TICKERS and item.channel == "tickers.BTCUSDT"
        state = dict(msg["data"]) if msg["type"] == "snapshot" else {**state, **msg["data"]}
        row = row_dict(m.TICKERS, item.rows[0])
        assert row["exchange_ts"] == msg["ts"] * 1000 and row["receive_ts"] == 123
        assert row["cross_seq"] == msg["cs"] and row["message_type"] == msg["type"]
        assert row["fields"] == list(msg["data"])
        for col in ("last_price", "best_bid_price", "best_bid_amount", "best_ask_price",
                    "best_ask_amount", "mark_price", "index_price", "open_interest", "funding_rate",
                    "turnover_24h", "volume_24h", "tick_direction", "pre_open_price"):
            assert row[col] == expected_ticker_value(col, state), col
        assert row["next_funding_time"] == int(state["nextFundingTime"]) * 1000
        assert json.loads(row["other"]) == {"singleOpenInterest": state["singleOpenInterest"],
                                            "singleOpenInterestValue": state["singleOpenInterestValue"]}
    assert len(raws) == 13   # the snapshot and 12 deltas


def test_delta_before_snapshot_is_rejected_and_state_is_per_decoder() -> None:
    snapshot, delta = frames("linear", "tickers.")[:2]
    with pytest.raises(RejectedFrame, match="delta before any snapshot"):
        BybitDecoder("linear").decode(delta, 1)
    first = BybitDecoder("linear")
    first.decode(snapshot, 1)
    first.decode(delta, 2)
    with pytest.raises(RejectedFrame):                 # a new connection starts without state
        BybitProtocol(("linear",)).decoder_for("linear").decode(delta, 3)


def test_bad_delta_leaves_state_untouched() -> None:
    snapshot = frames("linear", "tickers.")[0]
    dec = BybitDecoder("linear")
    dec.decode(snapshot, 1)
    before = dict(dec.tickers["tickers.BTCUSDT"])
    bad = json.dumps({"topic": "tickers.BTCUSDT", "type": "delta", "ts": 1786310817683, "cs": 1,
                      "data": {"symbol": "BTCUSDT", "bid1Price": 65114.2}})
    with pytest.raises(RejectedFrame, match="bid1Price: expected a decimal string"):
        dec.decode(bad, 2)
    assert dec.tickers["tickers.BTCUSDT"] == before


def test_merged_linear_tickers_equal_every_snapshot_of_the_capture(real_data_dir: Path) -> None:
    """Wherever the 2026-08-09 capture has a full snapshot of a symbol after deltas, the quote
    merged from the deltas so far equals it (fields the snapshot carries)."""
    decoders: dict[str, BybitDecoder] = {}
    compared = snapshots = 0
    with gzip.open(real_data_dir / CAPTURE, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] != "recv" or not rec["url"].endswith("/linear"):
                continue
            msg = json.loads(rec["raw"])
            if not msg.get("topic", "").startswith("tickers."):
                continue
            dec = decoders.setdefault(rec["conn"], BybitDecoder("linear"))
            merged = dict(dec.tickers.get(msg["topic"], {}))
            if msg["type"] == "snapshot":
                snapshots += 1
                if merged:
                    assert {k: merged.get(k) for k in msg["data"]} == msg["data"]
                    compared += 1
            row = row_dict(m.TICKERS, dec.decode(rec["raw"], 0).rows[0])
            full = dec.tickers[msg["topic"]]
            for field, column in m.TICKER_NUMERIC.items():
                if field in full and column in row:
                    assert row[column] == (full[field] or None)
    assert snapshots == 4   # one per symbol at subscribe: each starts a state (none to compare)
    assert compared == 0


def test_spot_ticker_snapshots_and_channel_prefix() -> None:
    for raw in frames("spot", "tickers."):
        item = BybitDecoder("spot").decode(raw, 5)
        msg = json.loads(raw)
        row = row_dict(m.TICKERS, item.rows[0])
        assert item.channel == "spot." + msg["topic"]
        assert row["category"] == "spot" and row["instrument_name"] == "BTCUSDT-SPOT"
        assert row["usd_index_price"] == msg["data"]["usdIndexPrice"]
        assert row["last_price"] == msg["data"]["lastPrice"] and row["cross_seq"] == msg["cs"]


def test_option_tickers_are_snapshots_with_greeks_and_ivs() -> None:
    raws = frames("option", "tickers.")
    assert len(raws) == 3
    for raw in raws:
        msg = json.loads(raw)
        row = row_dict(m.TICKERS, BybitDecoder("option").decode(raw, 5).rows[0])
        d = msg["data"]
        assert row["category"] == "option" and row["instrument_name"] == d["symbol"]
        assert row["cross_seq"] is None and row["exchange_ts"] == msg["ts"] * 1000
        expect = {"best_bid_price": "bidPrice", "best_bid_amount": "bidSize", "bid_iv": "bidIv",
                  "best_ask_price": "askPrice", "best_ask_amount": "askSize", "ask_iv": "askIv",
                  "mark_price": "markPrice", "mark_iv": "markPriceIv", "index_price": "indexPrice",
                  "underlying_price": "underlyingPrice", "open_interest": "openInterest",
                  "delta": "delta", "gamma": "gamma", "vega": "vega", "theta": "theta",
                  "total_volume": "totalVolume", "change_24h": "change24h"}
        for col, field in expect.items():
            assert row[col] == d[field], col
        assert row["other"] is None


def test_trades_several_per_message_linear_spot_option() -> None:
    seen = 0
    for category in ("linear", "spot", "option"):
        for raw in frames(category, "publicTrade."):
            msg = json.loads(raw)
            item = BybitDecoder(category).decode(raw, 9)
            assert item.table is m.TRADES and len(item.rows) == len(msg["data"])
            assert item.channel == ("spot." if category == "spot" else "") + msg["topic"]
            for t, r in zip(msg["data"], item.rows):
                row = row_dict(m.TRADES, r)
                assert row["instrument_name"] == m.instrument_name(category, t["s"])
                assert row["trade_id"] == t["i"] and row["exchange_ts"] == t["T"] * 1000
                assert (row["price"], row["amount"]) == (t["p"], t["v"])
                assert row["direction"] == t["S"].lower() and row["block_trade"] == t["BT"]
                assert row["tick_direction"] == t.get("L") and row["cross_seq"] == t.get("seq")
                assert row["rpi"] == t.get("RPI") and row["source"] == "ws"
                seen += 1
    assert seen >= 8


def test_option_trade_ivs() -> None:
    trade = {"T": 1680652922081, "s": "BTC-28APR23-29500-C", "S": "Sell", "v": "0.01", "p": "985",
             "i": "0404c393", "BT": True, "mP": "990.5", "iP": "28000.1", "mIv": "0.5012", "iv": "0.4988"}
    row = row_dict(m.TRADES, m.trade_row("option", trade, 1))
    assert (row["mark_price"], row["index_price"], row["mark_iv"], row["iv"]) == ("990.5", "28000.1", "0.5012", "0.4988")
    assert row["block_trade"] is True


def test_rest_recent_trade_rows() -> None:
    body = json.loads((FIXTURES / "nautilus_http_get_trades_recent.json").read_text())
    t = body["result"]["list"][0]
    row = row_dict(m.TRADES, m.trade_row("linear", t, 7, "rest"))
    assert row["trade_id"] == t["execId"] and row["exchange_ts"] == int(t["time"]) * 1000
    assert (row["price"], row["amount"], row["direction"]) == (t["price"], t["size"], "buy")
    assert row["source"] == "rest" and row["block_trade"] is False


@pytest.mark.parametrize("raw, reason", [
    ("{not json", "decode error"),
    ("[1,2]", "not a JSON object"),
    ('{"topic":"orderbook.1.BTCUSDT","data":{}}', "unknown topic"),
    ('{"topic":"publicTrade.BTCUSDT","data":[{"T":1,"s":"BTCUSDT","S":"Hold","v":"1","p":"1","i":"x"}]}', "side"),
    ('{"topic":"publicTrade.BTCUSDT","data":[{"T":1,"s":"BTCUSDT","S":"Buy","v":"1","p":"NaN","i":"x"}]}', "finite"),
    ('{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"symbol":"ETHUSDT"}}', "ticker of"),
    ('{"topic":"tickers.BTCUSDT","type":"snapshot","ts":"1","data":{"symbol":"BTCUSDT"}}', "integer ts"),
    ('{"success":true,"op":"subscribe"}', "without req_id"),
    ('{"hello":1}', "neither"),
])
def test_rejections(raw: str, reason: str) -> None:
    with pytest.raises(RejectedFrame, match=reason):
        BybitDecoder("linear").decode(raw, 1)


def test_subscribe_frames_acks_and_pongs() -> None:
    proto = BybitProtocol(("linear", "option", "spot"), ("ETH", "BTC"))
    ids = IdSource()
    req = proto.subscribe_request(["tickers.BTCUSDT", "publicTrade.BTCUSDT"], ids)
    assert json.loads(req.frame) == {"req_id": req.request_id, "op": "subscribe",
                                     "args": ["tickers.BTCUSDT", "publicTrade.BTCUSDT"]}
    assert isinstance(req.request_id, str)
    ok = BybitDecoder("linear").decode(json.dumps({"success": True, "ret_msg": "", "conn_id": "c",
                                                   "req_id": req.request_id, "op": "subscribe"}), 1)
    assert ok == Response(req.request_id, {"success": True}, None)
    assert proto.acknowledged_channels(req, [ok]) == list(req.channels)
    bad = BybitDecoder("linear").decode(json.dumps({"success": False, "ret_msg": "error:handler not found",
                                                    "req_id": req.request_id, "op": "subscribe"}), 1)
    assert bad.error["message"] == "error:handler not found"
    assert proto.acknowledged_channels(req, [bad]) == []
    # spot: the channel carries the endpoint, the frame the plain topic
    spot = proto.subscribe_request(["spot.tickers.BTCUSDT"], ids)
    assert json.loads(spot.frame)["args"] == ["tickers.BTCUSDT"]
    # option: COMMAND_RESP without req_id matches by its topics
    chans = ["tickers.ETH-26SEP25-3000-C", "tickers.ETH-26SEP25-3000-P"]
    opt = proto.subscribe_request(chans, ids)
    resp = BybitDecoder("option").decode(json.dumps({
        "success": True, "conn_id": "x", "type": "COMMAND_RESP",
        "data": {"failTopics": [chans[1]], "successTopics": [chans[0]]}}), 1)
    assert resp.request_id == opt.request_id and resp.error == {"code": "failTopics", "message": chans[1]}
    assert proto.acknowledged_channels(opt, [resp]) == [chans[0]]
    # pings
    assert proto.ping_interval_s == 20 and json.loads(proto.ping_frame(ids)) == {"op": "ping"}
    for pong in ('{"success":true,"ret_msg":"pong","conn_id":"x","req_id":"","op":"ping"}',
                 '{"args":["1672916271846"],"op":"pong"}'):
        assert BybitDecoder("option").decode(pong, 1) == Control(None)


def test_endpoints_channels_and_args_budget() -> None:
    proto = BybitProtocol(("linear", "option", "spot"), ("ETH", "BTC"))
    chans = proto.channels_for(["BTCUSDT", "ETH-26SEP25-3000-C-USDT", "BTCUSDT-SPOT"])
    assert chans == ["publicTrade.ETH", "publicTrade.BTC", "tickers.BTCUSDT", "publicTrade.BTCUSDT",
                     "tickers.ETH-26SEP25-3000-C-USDT", "spot.tickers.BTCUSDT", "spot.publicTrade.BTCUSDT"]
    assert [proto.endpoint_of(c) for c in chans] == ["option", "option", "linear", "linear", "option",
                                                     "spot", "spot"]
    option_topics = [f"tickers.ETH-26SEP25-{k}-C-USDT" for k in range(1000, 3000)]
    cap = proto.max_channels_per_connection(option_topics)
    assert cap * (len(option_topics[0]) + 3) <= MAX_ARGS_CHARS * 0.75
    assert topic_of("spot.publicTrade.ETHUSDT") == "publicTrade.ETHUSDT"


def test_venue_streams_settings_and_channel_instruments() -> None:
    venue = get_venue("bybit")
    s = venue.load_settings()
    assert s.universe_groups() == ("linear", "ETH", "BTC")
    assert venue.ws_endpoints(s) == {"linear": "wss://stream.bybit.com/v5/public/linear",
                                     "option": "wss://stream.bybit.com/v5/public/option"}
    assert [(x.name, x.table.name, x.recovery.value) for x in venue.streams(s)] == [
        ("tickers", "bybit_tickers", "none"), ("trades", "bybit_trades", "time")]
    assert venue.channel_instrument("tickers.BTCUSDT") == "BTCUSDT"
    assert venue.channel_instrument("spot.publicTrade.BTCUSDT") == "BTCUSDT-SPOT"
    assert venue.channel_instrument("publicTrade.ETH") is None
    assert venue.channel_instrument("publicTrade.ETHUSDT") == "ETHUSDT"
    with pytest.raises(Exception, match="categories"):
        venue.load_settings(categories="linear,futures")
    assert venue.load_settings(option_top_n="all").option_top_n is None


def test_numeric_strings_are_exact() -> None:
    assert Decimal(m._num("0.00000128", "g")) == Decimal("0.00000128")
    assert m._num("", "x") is None
