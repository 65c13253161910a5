"""Kraken WS v2 protocol and decoder on the real frames in ../shared/data/real/kraken (Nautilus'
ws_* samples, tardis-node's v2 messages) and REST rows (Nautilus' http_trades.json)."""

from __future__ import annotations

import json

import pytest

from collector_daemon.rows import EXCHANGE_CANDLES, TRADES
from collector_daemon.venues import Control, Data, IdSource, RejectedFrame, Response, get_venue
from collector_daemon.venues.kraken import messages as m
from collector_daemon.venues.kraken.protocol import KrakenDecoder, KrakenProtocol
from collector_daemon.venues.kraken.venue import KrakenSettings


def _json(real_data_dir, name: str) -> str:
    return (real_data_dir / "kraken" / "nautilus_test_data" / name).read_text()


def test_trade_frame_rows_exact(real_data_dir):
    item = KrakenDecoder().decode(_json(real_data_dir, "ws_trade_update.json"), 1_700_000_000_000_000)
    assert type(item) is Data and item.table is TRADES and item.channel == "trade:BTC/USD"
    rows = [dict(zip(TRADES.columns, r)) for r in item.rows]
    assert [(r["trade_id"], r["trade_seq"], r["price"], r["amount"], r["direction"], r["ord_type"],
             r["exchange_ts"], r["source"]) for r in rows] == [
        ("10218208", 10218208, 105944.20, 0.00027625, "buy", "limit", 1696613755440295, "ws"),
        ("10218209", 10218209, 105910.50, 0.00012460, "sell", "market", 1696613756123456, "ws")]


def test_tardis_v2_trades_decode(real_data_dir):
    lines = (real_data_dir / "kraken" / "tardis-node_test-embedded_kraken_ws_v2_messages.jsonl").read_text().splitlines()
    trades = [line for line in lines if '"channel":"trade"' in line]
    d = KrakenDecoder()
    got = [d.decode(t, 1).rows for t in trades]
    # tardis' frames carry no ord_type: stored as NULL, not guessed
    assert [(r[0][2], r[0][4], r[0][16]) for r in got] == [("122", 1783641600023456, None),
                                                           ("123", 1783641600123456, None)]


def test_ohlc_open_then_closed(real_data_dir):
    d = KrakenDecoder()
    raw = json.loads(_json(real_data_dir, "ws_ohlc_update.json"))
    first = d.decode(json.dumps(raw), 1)
    assert first.table is EXCHANGE_CANDLES and first.channel == "ohlc-1:BTC/USD"
    assert [r[11] for r in first.rows] == [False]
    nxt = dict(raw["data"][0], interval_begin="2023-10-04T16:26:00.000000000Z", open=1.0, high=2.0,
               low=0.5, close=1.5, trades=1)
    second = d.decode(json.dumps({**raw, "data": [nxt]}), 2)
    # the previous candle's last state again, now closed, then the new open one
    assert [(r[3], r[11], r[4]) for r in second.rows] == [
        (1696436700000000, True, 106038.2), (1696436760000000, False, 1.0)]


def test_status_heartbeat_pong_and_acks():
    d = KrakenDecoder()
    assert d.decode('{"channel":"heartbeat"}', 1) == Control(None)
    for status in ("online", "maintenance", "cancel_only", "post_only"):
        frame = json.dumps({"channel": "status", "type": "update", "data": [
            {"api_version": "v2", "connection_id": 1, "system": status, "version": "2.0.0"}]})
        assert d.decode(frame, 1) == Control(None, status=status)
    assert d.decode('{"method":"pong","req_id":3}', 1) == Control(None)
    p = KrakenProtocol((1, 5))
    chans = p.channels_for(["BTC/USD", "ETH/USD"])
    batches = p.subscribe_batches(chans)
    assert batches == [["trade:BTC/USD", "trade:ETH/USD"], ["ohlc-1:BTC/USD", "ohlc-1:ETH/USD"],
                       ["ohlc-5:BTC/USD", "ohlc-5:ETH/USD"]]
    req = p.subscribe_request(batches[1], IdSource())
    assert json.loads(req.frame) == {"method": "subscribe", "params": {
        "channel": "ohlc", "symbol": ["BTC/USD", "ETH/USD"], "interval": 1, "snapshot": True}, "req_id": 1}
    assert req.responses == 2   # one ack per symbol
    ok = d.decode(json.dumps({"method": "subscribe", "result": {"channel": "ohlc", "symbol": "BTC/USD",
                                                                 "interval": 1, "snapshot": True},
                              "success": True, "req_id": 1}), 1)
    bad = d.decode(json.dumps({"method": "subscribe", "error": "Currency pair not supported ETH/USD",
                               "success": False, "symbol": "ETH/USD", "req_id": 1}), 1)
    assert type(ok) is Response and type(bad) is Response and bad.error is not None
    assert p.acknowledged_channels(req, [ok, bad]) == ["ohlc-1:BTC/USD"]
    assert p.min_reconnect_delay_s("maintenance") == 5.0 and p.min_reconnect_delay_s("online") == 0.0
    assert json.loads(p.ping_frame(IdSource())) == {"method": "ping", "req_id": 1}


@pytest.mark.parametrize("field,value,reason", [
    ("price", -1, "price"), ("price", "nan", "price"), ("qty", 0, "qty"), ("side", "b", "side"),
    ("ord_type", "stop", "ord_type"), ("timestamp", "2001-01-01T00:00:00.000000Z", "implausible"),
    ("trade_id", "7", "trade_id")])
def test_bad_trade_values_rejected(real_data_dir, field, value, reason):
    raw = json.loads(_json(real_data_dir, "ws_trade_update.json"))
    raw["data"][1][field] = value
    with pytest.raises(RejectedFrame, match=reason):
        KrakenDecoder().decode(json.dumps(raw), 1)


def test_rest_rows_and_validation(real_data_dir):
    body = json.loads(_json(real_data_dir, "http_trades.json"))["result"]
    rows = [m.rest_trade_row("BTC/USDT", r, 1) for r in body["XBTUSDT"]]
    assert len(rows) == 1000 and rows[0][2:5] == ("10218208", 10218208, 1762795433971744)
    assert [r[3] for r in rows] == list(range(10218208, 10219208))   # sequential trade ids
    assert rows[0][6:9] == (105433.6, 0.00027625, "buy") and rows[0][16] == "limit"
    with pytest.raises(m.BadValue, match="volume"):
        m.rest_trade_row("BTC/USDT", ["1.0", "-2", 1762795433.9, "b", "l", "", 1], 1)
    with pytest.raises(m.BadValue, match="side"):
        m.rest_trade_row("BTC/USDT", ["1.0", "2", 1762795433.9, "x", "l", "", 1], 1)


def test_pairs_from_asset_pairs_and_settings(real_data_dir, monkeypatch):
    assert m.v2_symbol("XBT/USDT") == "BTC/USDT" and m.v2_symbol("ETH/USD") == "ETH/USD"
    s = KrakenSettings()
    assert s.pair_list == ("BTC/USD", "ETH/USD") and s.interval_list == (1,)
    monkeypatch.setenv("TICKVAULT_KRAKEN_OHLC_INTERVALS", "1,7")
    with pytest.raises(Exception, match="ohlc_intervals"):
        KrakenSettings()
    venue = get_venue("kraken")
    assert venue.stream_specs()[0].sequence_column == "trade_seq"
    assert venue.limits.connects_per_period == (150, 600.0)


def test_collector_paces_connects_per_ip(tmp_path):
    """The daemon's connect limiter: Kraken's ~150 (re)connects per 10 minutes per IP, shared by
    every socket of the collector (other venues have none)."""
    from collector_daemon.daemon import Collector
    from collector_daemon.settings import load_settings
    base = dict(database_url="postgresql://tickvault@127.0.0.1:1/unused", metrics_port="",
                spool_dir=tmp_path / "spool")
    kraken = Collector(load_settings(venue="kraken", **base))
    assert (kraken._connect_limiter.max_rate, kraken._connect_limiter.time_period) == (150, 600.0)
    assert Collector(load_settings(venue="deribit", **base))._connect_limiter is None


def test_rest_ohlc_rows_exact_and_validated(real_data_dir):
    """The real REST OHLC answer (Nautilus' http_ohlc.json) -> exchange_candles rows (source
    rest); an interval without trades has vwap NULL; a malformed row names its field."""
    raw = json.loads(_json(real_data_dir, "http_ohlc.json"))["result"]["XBTUSDT"]
    with_trades = next(r for r in raw if r[7] > 0)
    row = dict(zip(EXCHANGE_CANDLES.columns, m.rest_ohlc_row("BTC/USDT", 1, with_trades, 7, True)))
    assert row == {"venue": "kraken", "instrument_name": "BTC/USDT", "interval_minutes": 1,
                   "interval_begin": with_trades[0] * 1_000_000, "open": float(with_trades[1]),
                   "high": float(with_trades[2]), "low": float(with_trades[3]),
                   "close": float(with_trades[4]), "vwap": float(with_trades[5]),
                   "volume": float(with_trades[6]), "trade_count": with_trades[7], "closed": True,
                   "source": "rest", "receive_ts": 7}
    empty = m.rest_ohlc_row("BTC/USDT", 1, raw[-1], 7, False)
    assert raw[-1][7] == 0 and empty[8] is None and empty[9] == 0.0 and empty[11] is False
    for bad, reason in (([1762820220, "x", "1", "1", "1", "1", "1", 1], "open"),
                        (["1762820220", "1", "1", "1", "1", "1", "1", 1], "time"),
                        ([1762820220, "1", "1", "1", "1", "1", "-1", 1], "volume"),
                        ([1762820220, "1", "1", "1"], "8 fields")):
        with pytest.raises(m.BadValue, match=reason):
            m.rest_ohlc_row("BTC/USDT", 1, bad, 7, True)
