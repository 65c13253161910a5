"""Measured on the real captures: within one instrument, trade_seq advances by exactly 1 per
trade and never goes back in time (the premise of the daemon's trade_seq gap detection).

Only sources that are complete consecutive runs count: REST pages (each page is the newest N
trades of one call) and single WebSocket notifications; the tardis samples are unrelated frames
picked from different years, so they are excluded."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.realdata

PAGES = [
    ("nautilus_test_data/http_get_last_trades.json", lambda d: d["result"]["trades"]),
    ("nautilus_test_data/http_get_last_trades_perpetual_with_combo_tags.json", lambda d: d["result"]["trades"]),
    ("openbb_test_data/trades_instrument.json", lambda d: d["trades"]),
    ("openbb_test_data/trades_currency.json", lambda d: d["trades"]),
    ("misc_rest_samples/zhangjt_2020-05-26_get_last_trades_by_currency_and_time_BTC_result_only.json", lambda d: d),
]


def test_trade_seq_is_plus_one_per_trade(real_data_dir: Path) -> None:
    runs = 0
    steps = 0
    for name, pick in PAGES:
        by_instrument: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for t in pick(json.loads((real_data_dir / "deribit" / name).read_text())):
            by_instrument[t["instrument_name"]].append((t["trade_seq"], t["timestamp"]))
        for trades in by_instrument.values():
            trades.sort()
            for (seq_a, ts_a), (seq_b, ts_b) in zip(trades, trades[1:]):
                assert seq_b - seq_a == 1 and ts_b >= ts_a, (name, seq_a, seq_b)
                steps += 1
            runs += len(trades) > 1
    # 6 runs, 38 consecutive steps (ETH-PERPETUAL 10, BTC-PERPETUAL 7+5+16, BTC-26JUN20 4, an option 2)
    assert runs == 6 and steps == 38
