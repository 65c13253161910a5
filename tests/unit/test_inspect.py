"""``tickvault inspect``: real Bybit frames decoded offline into the rows the collector would
store, rejections with their reason, and the exit codes."""

from __future__ import annotations

import gzip
import json

import pytest

from collector_daemon import cli

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["inspect", *argv])
    return code, capsys.readouterr().out.splitlines()


def test_capture_frames_become_rows_or_reasons(real_data_dir, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TICKVAULT_BYBIT_CATEGORIES", "linear,spot")   # the capture's endpoints
    code, lines = run(capsys, "--venue", "bybit", str(real_data_dir / CAPTURE))
    with gzip.open(real_data_dir / CAPTURE, "rt") as fh:
        recv = [json.loads(line) for line in fh]
    recv = [r for r in recv if r["dir"] == "recv"]
    headers = [line for line in lines if line.startswith("#")]
    assert len(headers) == len(recv) and lines[-1].startswith(f"{len(recv)} frame(s)")
    topics = [json.loads(r["raw"]).get("topic", "") for r in recv]
    for header, topic, rec in zip(headers, topics, recv):
        endpoint = rec["url"].rsplit("/", 1)[1]                 # decoded per the record's endpoint
        if topic.startswith("tickers."):
            assert header.split(" ", 2)[1:] == [endpoint, "bybit_tickers: 1 row(s)"]
        elif topic.startswith("publicTrade."):
            n = len(json.loads(rec["raw"])["data"])
            assert header.endswith(f"{endpoint} bybit_trades: {n} row(s)")
        elif topic:
            assert f"REJECTED: unknown topic '{topic}'" in header       # orderbook, kline: not collected
    assert code == 1                                                      # some frames were rejected
    trade = next(json.loads(lines[i + 1]) for i, line in enumerate(lines) if "bybit_trades" in line)
    first = next(json.loads(r["raw"])["data"][0] for r, t in zip(recv, topics) if t.startswith("publicTrade."))
    assert (trade["trade_id"], trade["price"], trade["amount"]) == (first["i"], first["p"], first["v"])


def test_private_frame_and_exit_codes(real_data_dir, tmp_path, capsys) -> None:
    path = real_data_dir / "bybit/nautilus_test_data/ws_account_execution.json"
    code, lines = run(capsys, "--venue", "bybit", "--endpoint", "private", str(path))
    fill = json.loads(path.read_text())["data"][0]
    row = json.loads(lines[1])
    assert code == 0 and lines[0] == "#1 private bybit_executions: 1 row(s)"
    assert (row["exec_id"], row["exec_price"], row["exec_fee"], row["exchange_ts"]) == (
        fill["execId"], fill["execPrice"], fill["execFee"], "2025-05-03T11:06:40.353000+00:00")
    bad = tmp_path / "frames.jsonl"
    bad.write_text('{"topic":"execution","data":[{"category":"linear"}]}\nnot json\n{"op":"pong","args":["1"]}\n')
    code, lines = run(capsys, "--venue", "bybit", "--endpoint", "private", str(bad))
    assert code == 1
    assert lines[0] == "#1 private REJECTED: execution: fill without symbol"
    assert lines[1].startswith("#2 private REJECTED: decode error")
    assert lines[2] == "#3 private control"
    assert cli.main(["inspect", "--venue", "bybit", "--endpoint", "nope", str(bad)]) == 2
    assert cli.main(["inspect", "--venue", "nosuch", str(bad)]) == 2
    assert cli.main(["inspect", "--venue", "bybit", str(tmp_path / "missing")]) == 2


def test_frames_of_an_endpoint_not_configured_are_rejected_saying_so(real_data_dir, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TICKVAULT_BYBIT_CATEGORIES", "linear")
    code, lines = run(capsys, "--venue", "bybit", str(real_data_dir / CAPTURE))
    spot = [line for line in lines if "/v5/public/spot" in line]
    assert code == 1 and spot
    assert all(line.endswith("REJECTED: unconfigured endpoint wss://stream.bybit.com/v5/public/spot "
                             "(the venue's settings leave it out)") for line in spot)
