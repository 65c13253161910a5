"""Deribit emulation pieces without a server: names, trade sources, timeline, re-keying, frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector_daemon.emulator.venue import load_venue
from collector_daemon.venues.deribit.emulation import (
    PERPETUAL_EXPIRY_MS,
    DeribitEmulation,
    InstrumentInfo,
    load_trade_source,
    parse_instrument,
)

pytestmark = pytest.mark.realdata


def data_of(frame: bytes) -> Any:
    return json.loads(frame)["params"]["data"]


@pytest.mark.parametrize(("name", "expected"), [
    ("ETH-9APR21-1950-C", InstrumentInfo("ETH-9APR21-1950-C", "option", "ETH", "ETH", "ETH",
                                         1617955200000, 1950.0, "call")),
    ("BTC-31DEC21-300000-P", InstrumentInfo("BTC-31DEC21-300000-P", "option", "BTC", "BTC", "BTC",
                                            1640937600000, 300000.0, "put")),
    ("MATIC_USDC-9MAR24-1d02-C", InstrumentInfo("MATIC_USDC-9MAR24-1d02-C", "option", "MATIC",
                                                "USDC", "USDC", 1709971200000, 1.02, "call")),
    ("BTC-PERPETUAL", InstrumentInfo("BTC-PERPETUAL", "future", "BTC", "BTC", "BTC",
                                     PERPETUAL_EXPIRY_MS)),
    ("ETH_USDC-PERPETUAL", InstrumentInfo("ETH_USDC-PERPETUAL", "future", "ETH", "USDC", "USDC",
                                          PERPETUAL_EXPIRY_MS)),
    ("BTC-24SEP21", InstrumentInfo("BTC-24SEP21", "future", "BTC", "BTC", "BTC", 1632470400000)),
    ("BTC-FS-29MAR24_PERP", InstrumentInfo("BTC-FS-29MAR24_PERP", "future_combo", "BTC", "BTC",
                                           "BTC")),
])
def test_parse_instrument(name: str, expected: InstrumentInfo):
    assert parse_instrument(name) == expected


def test_trade_sources_of_every_format(deribit_dir: Path, cyri113_csv: Path):
    by_currency = load_trade_source(deribit_dir / "openbb_test_data" / "trades_currency.json")
    raw = json.loads((deribit_dir / "openbb_test_data" / "trades_currency.json").read_text())
    assert by_currency == raw["trades"]  # value-for-value, all fields kept

    by_instrument = load_trade_source(deribit_dir / "openbb_test_data" / "trades_instrument.json")
    assert [t["trade_seq"] for t in by_instrument] == list(range(299983429, 299983424, -1))

    envelope = load_trade_source(deribit_dir / "nautilus_test_data" / "http_get_last_trades.json")
    assert len(envelope) == 10 and envelope[0]["trade_id"] == "ETH-284830839"

    bare = load_trade_source(deribit_dir / "misc_rest_samples" /
                             "zhangjt_2020-05-26_get_last_trades_by_currency_and_time_BTC_result_only.json")
    assert len(bare) == 20 and bare[0]["trade_seq"] == 30287934

    rows = load_trade_source(cyri113_csv)
    assert len(rows) == 9424
    assert rows[0] == {"trade_id": "440369272", "instrument_name": "BTC-17AUG26-63000-P",
                       "timestamp": 1786911707538, "price": 0.002, "amount": 0.1,
                       "direction": "sell", "index_price": 63064.71, "mark_price": 0.00229887,
                       "iv": 16.72}
    perp = next(t for t in rows if t["instrument_name"] == "BTC-PERPETUAL")
    assert "iv" not in perp and "trade_seq" not in perp and "tick_direction" not in perp


def test_timeline_of_the_capture(capture_0405: Path):
    venue = DeribitEmulation()
    events = venue.load(capture_0405, None)
    assert [e.kind for e in events].count("ticker") == 273
    assert [e.kind for e in events].count("book") == 187
    clock = [e.ts for e in events]
    assert clock == sorted(clock)
    assert all(e.ts >= e.data["timestamp"] for e in events)  # clock = running max of timestamps
    assert events[0].routes == ("ticker.ETH-9APR21-1950-C",)


def test_trade_source_timeline_derives_trade_seq_and_groups(capture_0405: Path, cyri113_csv: Path):
    venue = DeribitEmulation()
    events = [e for e in venue.load(capture_0405, cyri113_csv) if e.kind == "trades"]
    assert sum(len(e.data) for e in events) == 9424
    assert events[0].routes == (
        "trades.BTC-17AUG26-63000-P", "trades.option.BTC", "trades.option.any",
        "trades.any.BTC", "trades.any.any")
    first = events[0]
    assert [t["trade_id"] for t in first.data] == ["440369272", "440369273"]  # same ms: one frame
    assert [t["trade_seq"] for t in first.data] == [1, 2]
    assert first.trade_ids == (("BTC-17AUG26-63000-P", "440369272"),
                               ("BTC-17AUG26-63000-P", "440369273"))
    perp = [t["trade_seq"] for e in events if e.instrument == "BTC-PERPETUAL" for t in e.data]
    assert perp == list(range(1, 9148))


def test_loop_and_fanout_variants_match_a_full_reencoding(capture_0405: Path):
    """Variants are serialised by substituting tokens in the source bytes: they must decode to
    exactly the source payload with the loop shift and the copy's name applied."""
    venue = DeribitEmulation(fanout=3)
    events = venue.load(capture_0405, None)
    timestamps = [e.data["timestamp"] for e in events] + [e.ts for e in events]
    shift = max(timestamps) - min(timestamps) + 1  # span of every timestamp + 1 ms
    changes = [e.data[k] for e in events if e.kind == "book"
               for k in ("change_id", "prev_change_id") if k in e.data]
    change_shift = max(changes) - min(changes) + 1
    copies_seen = set()
    for event in events:
        for k in (0, 1, 2):
            played = venue.instantiate(event, k)
            assert played[0].instrument == event.instrument
            assert len(played) == 3  # every instrument of this capture is an option
            for variant in played:
                copies_seen.add(variant.instrument)
                expected = dict(event.data, timestamp=event.data["timestamp"] + k * shift,
                                instrument_name=variant.instrument)
                if event.kind == "book" and k:
                    for key in ("change_id", "prev_change_id"):
                        if key in expected:
                            expected[key] += k * change_shift
                channel = f"{event.kind}.{variant.instrument}.100ms"
                assert variant.routes == (f"{event.kind}.{variant.instrument}",)
                assert variant.ts == event.ts + k * shift
                assert data_of(venue.frame(channel, variant)) == expected
    assert {"ETH-9APR21-1951-C", "ETH-9APR21-1952-C", "BTC-25MAR22-400001-C"} <= copies_seen
    assert len(copies_seen) == 30


def test_trade_ids_keep_their_prefix_across_loops_and_copies(capture_0405: Path,
                                                           deribit_dir: Path):
    venue = DeribitEmulation(fanout=2)
    events = venue.load(capture_0405, deribit_dir / "nautilus_test_data" /
                        "http_get_last_trades.json")
    trades = [e for e in events if e.kind == "trades"]
    ids = [int(t["trade_id"].removeprefix("ETH-")) for e in trades for t in e.data]
    span = max(ids) - min(ids) + 1
    seen = set()
    for e in trades:
        for k in (0, 1, 2):
            for variant in venue.instantiate(e, k):  # a perpetual: no fan-out copies
                for src, t in zip(e.data, variant.data):
                    n = int(src["trade_id"].removeprefix("ETH-"))
                    assert t["trade_id"] == f"ETH-{n + 2 * k * span}"
                    assert t["trade_seq"] == src["trade_seq"] + k * 10
                    seen.add(t["trade_id"])
                assert variant.trade_ids == tuple(("ETH-PERPETUAL", t["trade_id"])
                                                  for t in variant.data)
    assert len(seen) == 30


def test_malformed_frames_are_never_valid_notifications(capture_0405: Path):
    venue = DeribitEmulation()
    event = venue.load(capture_0405, None)[0]
    channel = "ticker.ETH-9APR21-1950-C.100ms"
    assert len(venue.malformed_kinds) == 11
    for kind in venue.malformed_kinds:
        frame, binary = venue.malformed_frame(kind, channel, event, 50_000)
        assert binary == (kind == "binary"), kind
        if binary:
            continue
        text = frame.decode("utf-8")  # a text frame must be valid UTF-8

        def reject(name: str) -> Any:
            raise ValueError(name)

        try:
            msg = json.loads(text, parse_constant=reject)
        except ValueError:
            continue  # truncated, not JSON, NaN/Infinity
        data = msg["params"]["data"]
        ok = (msg["params"]["channel"] == channel and isinstance(data.get("timestamp"), int)
              and data["timestamp"] < 2**63 and data.get("instrument_name") == event.instrument
              and all(isinstance(data.get(f), (int, float, type(None)))
                      for f in ("best_bid_price", "mark_price")) and len(frame) < 50_000)
        assert not ok, kind


def test_load_venue_by_convention():
    assert isinstance(load_venue("deribit", fanout=2), DeribitEmulation)
    with pytest.raises(ValueError, match="no emulation"):
        load_venue("nosuchvenue")
