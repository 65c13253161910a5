"""trades_backfill materialised in process against the emulator's REST (the collector's
DeribitRest, Trade.to_row and BatchWriter underneath)."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from collector_daemon.rows import TRADES
from orch_dagster import gaps, mat_metadata, materialize, resources, trade_gaps, trades_backfill
from orch_data import D0816, D0817, T_ID, T_INSTR, T_SOURCE, trade_rows
from collector_daemon.core.days import to_us
from collector_daemon.core.gaps import Gap, GapStatus
from collector_daemon.venues import get_venue

BTC = {"currency": "BTC", "kinds": ["option", "future"]}


def _trades(dsn: str, day_from, day_to) -> dict[tuple[str, str], tuple]:
    cols = ", ".join(TRADES.columns)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT {cols}, (extract(epoch FROM exchange_ts) * 1000000)::bigint, "
            f"(extract(epoch FROM receive_ts) * 1000000)::bigint FROM trades "
            f"WHERE exchange_ts >= %s AND exchange_ts < %s", (day_from, day_to)).fetchall()
    i_ex, i_rx = TRADES.columns.index("exchange_ts"), TRADES.columns.index("receive_ts")
    out = {}
    for r in rows:
        r = list(r[:len(TRADES.columns)])
        r[i_ex] = int(round(r[i_ex].timestamp() * 1_000_000))
        r[i_rx] = None
        out[(r[T_INSTR], r[T_ID])] = tuple(r)
    return out


def _expected(trades, day_from, day_to) -> dict[tuple[str, str], tuple]:
    lo, hi = day_from.timestamp() * 1000, day_to.timestamp() * 1000
    out = {}
    for row in trade_rows(t for t in trades if lo <= t.timestamp < hi):
        r = list(row)
        r[TRADES.columns.index("receive_ts")] = None
        out[(r[T_INSTR], r[T_ID])] = tuple(r)
    return out


def test_backfill_closes_seq_holes_and_marks_old_windows(migrated_db_url, trades_days, emu_trades):
    res = resources(migrated_db_url, emu_trades.rest_url, **BTC)
    materialize([trade_gaps], "2026-08-17", res)
    result = materialize([trades_backfill], "2026-08-17", res)
    meta = mat_metadata(result, "trades_backfill")
    # includes the 16th's half of the hole across midnight: the 17th owns that hole
    removed_17 = trades_days["removed"]
    assert meta["gaps"] == 4
    assert (meta["backfilled"], meta["unrecoverable"], meta["still_open"]) == (3, 1, 0)
    assert meta["trades_inserted"] == len(removed_17)
    assert meta["by_method"] == {"seq": 3, "time": 0, "none": 1}
    assert meta["rest_calls"] == 3

    # Every trade of both days is back, value for value, the recovered ones with source=rest.
    got = _trades(migrated_db_url, D0816, D0817 + timedelta(days=1))
    want = _expected(trades_days["full"], D0816, D0817 + timedelta(days=1))
    src = {k: v[T_SOURCE] for k, v in got.items()}
    assert {k for k, s in src.items() if s == "rest"} == {k for k in want if k[1] in removed_17}
    strip = lambda d: {k: v[:T_SOURCE] + v[T_SOURCE + 1:] for k, v in d.items()}  # noqa: E731
    assert strip(got) == strip(want)

    rows = gaps(migrated_db_url, "audit_day = '2026-08-17'")
    status = {(r["instrument_name"], r["seq_from"]): r["status"] for r in rows}
    assert sorted(status.values()) == ["backfilled", "backfilled", "backfilled", "unrecoverable"]
    window = next(r for r in rows if r["instrument_name"] == "*")
    assert window["status"] == "unrecoverable"
    assert "older than 24 h" in window["reason"] and window["resolved_at"] is not None
    assert all("backfill: main host by trade_seq" in r["reason"] for r in rows
               if r["status"] == "backfilled")

    # Re-audit: the holes are gone, resolutions stay, nothing recoverable is left open.
    again = materialize([trade_gaps], "2026-08-17", res)
    assert mat_metadata(again, "trade_gaps")["findings"] == 1  # the lost window (resolved)
    assert mat_metadata(again, "trade_gaps")["recoverable_open_gaps"] == 0
    assert len(gaps(migrated_db_url, "audit_day = '2026-08-17'")) == 4


def test_backfill_window_from_history_host(migrated_db_url, trades_days, emu_trades):
    """With a history host configured, a window older than 24 h is fetched by time."""
    res = resources(migrated_db_url, emu_trades.rest_url, history_url=emu_trades.rest_url, **BTC)
    materialize([trade_gaps], "2026-08-17", res)
    meta = mat_metadata(materialize([trades_backfill], "2026-08-17", res), "trades_backfill")
    assert (meta["backfilled"], meta["unrecoverable"]) == (4, 0)
    assert meta["by_method"] == {"seq": 3, "time": 1, "none": 0}
    window = next(r for r in gaps(migrated_db_url) if r["instrument_name"] == "*")
    assert window["status"] == "backfilled"
    assert "history host by time window" in window["reason"]
    assert meta["trades_inserted"] == len(trades_days["removed"])


def test_backfill_day_without_live_capture(migrated_db_url, trades_days, emu_trades):
    """A day with no capture at all is fetched whole (by time, history host)."""
    with psycopg.connect(migrated_db_url) as conn:  # make 2026-08-16 a day without capture
        conn.execute("DELETE FROM trades WHERE exchange_ts < %s", (D0817,))
        conn.execute("DELETE FROM connection_events WHERE event_ts < %s", (D0817,))
    res = resources(migrated_db_url, emu_trades.rest_url, history_url=emu_trades.rest_url, **BTC)
    audit = materialize([trade_gaps], "2026-08-16", res)
    assert mat_metadata(audit, "trade_gaps")["by_kind"] == {"no_capture": 2}
    meta = mat_metadata(materialize([trades_backfill], "2026-08-16", res), "trades_backfill")
    want = _expected(trades_days["full"], D0816, D0817)
    assert meta["trades_inserted"] == len(want) > 0
    assert (meta["backfilled"], meta["unrecoverable"]) == (1, 1)  # trades yes, quotes never
    got = _trades(migrated_db_url, D0816, D0817)
    assert set(got) == set(want)
    assert {v[T_SOURCE] for v in got.values()} == {"rest"}
    quotes_gap = next(r for r in gaps(migrated_db_url) if r["stream"] == "quotes")
    assert quotes_gap["status"] == "unrecoverable" and "no REST history" in quotes_gap["reason"]


def test_plan_recovery_uses_main_host_within_24h():
    start = D0817 + timedelta(hours=18)
    deribit = get_venue("deribit")
    trades = deribit.stream(deribit.load_settings(), "trades")

    def plan_recovery(gap, now, history_available):
        return deribit.plan_recovery(gap, trades, now_us=to_us(now), history_available=history_available)

    s_us, e_us = to_us(start), to_us(start + timedelta(minutes=1))
    seq = Gap("deribit", "trades", "BTC-PERPETUAL", s_us, e_us, 10, 12, "audit", GapStatus.OPEN, "", 1)
    window = Gap("deribit", "trades", "*", s_us, e_us, None, None, "audit", GapStatus.OPEN, "", 2)
    soon = start + timedelta(hours=2)
    assert plan_recovery(window, now=soon, history_available=False).host == "main"
    assert plan_recovery(seq, now=soon, history_available=True).host == "main"
    late = start + timedelta(hours=30)
    assert plan_recovery(seq, now=late, history_available=True).host == "history"
    assert plan_recovery(seq, now=late, history_available=False).host == "main"
    assert not plan_recovery(window, now=late, history_available=False).recoverable
    assert plan_recovery(window, now=late, history_available=True).host == "history"


def test_backfill_gives_up_when_asked(migrated_db_url):
    """The collector's shutdown bound: with REST unreachable (every call retried with backoff for
    minutes), setting ``give_up`` ends the recovery within ~0.2 s; the gap stays open with the
    reason, nothing is marked recovered."""
    import asyncio
    import socket
    import time
    from datetime import datetime, timezone

    from collector_daemon.core.recovery import GapRecovery
    from collector_daemon.storage.writer import BatchWriter

    with socket.socket() as s:                       # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/api/v2"
    now = datetime.now(timezone.utc)
    with psycopg.connect(migrated_db_url) as conn:
        gap_id, = conn.execute(
            "INSERT INTO data_gaps (venue, stream, instrument_name, gap_start, gap_end, detected_by, "
            "status, reason) VALUES ('deribit', 'trades', '*', %s, %s, 'disconnect', 'open', 'test') "
            "RETURNING gap_id", (now - timedelta(minutes=5), now - timedelta(minutes=4))).fetchone()
    deribit = get_venue("deribit")
    settings = deribit.load_settings(rest_url=dead_url, currency="BTC")

    async def recover():
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        give_up = asyncio.Event()
        asyncio.get_running_loop().call_later(1.0, give_up.set)
        try:
            async with deribit.rest_client(settings) as rest:
                recovery = GapRecovery(deribit, settings, writer, rest)
                return await recovery.recover_ids([gap_id], now_us=to_us(now), give_up=give_up)
        finally:
            await writer.close()

    t0 = time.monotonic()
    report = asyncio.run(recover())
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 3.0, elapsed
    assert report.count("open") == 1 and report.count("backfilled") == 0
    assert ["collector shutting down" in o.note for o in report.errors] == [True]
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT status, resolved_at FROM data_gaps WHERE gap_id = %s",
                            (gap_id,)).fetchone() == ("open", None)
