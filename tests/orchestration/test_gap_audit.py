"""trade_gaps materialised in process against real captures with derived gaps; exact bounds."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from orch_dagster import backfill_day, gaps, mat_metadata, materialize, resources, trade_gaps
from orch_data import D0405, D0406, D0818, SILENT
from orchestration.lib.gaps import WriteResult, audit_day, write_findings


def _summary(rows: list[dict]) -> list[tuple]:
    return [(r["stream"], r["instrument_name"], r["gap_start"], r["gap_end"], r["seq_from"],
             r["seq_to"], r["reason"].split(":")[0]) for r in rows]


def test_audit_quotes_day_exact_findings(migrated_db_url, quotes_day):
    result = materialize([trade_gaps], "2021-04-05", resources(migrated_db_url))
    assert result.success
    found = _summary(gaps(migrated_db_url))
    assert found == [
        ("quotes", "*", quotes_day["disconnect"], D0406, None, None, "unresolved_disconnect"),
        ("quotes", SILENT, quotes_day["before"], quotes_day["after"], None, None, "quote_silence"),
        ("quotes", "ETH-9APR21-2000-C", D0405, D0406, None, None, "no_rows"),
        ("trades", "*", quotes_day["disconnect"], D0406, None, None, "unresolved_disconnect"),
    ]
    meta = mat_metadata(result, "trade_gaps")
    assert meta["findings"] == 4
    assert meta["by_kind"] == {"unresolved_disconnect": 2, "quote_silence": 1, "no_rows": 1}
    assert meta["expected_set_basis"] == "universe_versions"
    # Quote gaps cannot be recovered from REST; the trades window is older than 24 h and no
    # history host is configured in this test.
    assert meta["recoverable_open_gaps"] == 0 and meta["unrecoverable_open_gaps"] == 4
    rows = gaps(migrated_db_url)
    assert {r["detected_by"] for r in rows} == {"audit"}
    assert {r["audit_day"].isoformat() for r in rows} == {"2021-04-05"}
    assert {r["status"] for r in rows} == {"open"}


def test_audit_is_idempotent_and_keeps_resolutions(migrated_db_url, quotes_day):
    res = resources(migrated_db_url)
    materialize([trade_gaps], "2021-04-05", res)
    first = _summary(gaps(migrated_db_url))
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("UPDATE data_gaps SET status = 'unrecoverable', reason = reason || ' | test' "
                     "WHERE instrument_name = %s", (SILENT,))
        conn.execute("INSERT INTO data_gaps (venue, stream, instrument_name, gap_start, gap_end, "
                     "detected_by, status, reason) VALUES ('deribit', 'quotes', 'ETH-X', %s, %s, "
                     "'daemon', 'open', 'daemon finding')",
                     (D0405 + timedelta(hours=1), D0405 + timedelta(hours=2)))
    ids = [r["gap_id"] for r in gaps(migrated_db_url, "detected_by = 'audit'")]
    result = materialize([trade_gaps], "2021-04-05", res)
    meta = mat_metadata(result, "trade_gaps")
    assert (meta["inserted"], meta["updated"], meta["unchanged"],
            meta["deleted_open"], meta["already_resolved"]) == (0, 0, 3, 0, 1)
    rows = gaps(migrated_db_url)
    audit = [r for r in rows if r["detected_by"] == "audit"]
    assert _summary(audit) == first  # same findings, no duplicates
    assert [r["gap_id"] for r in audit] == ids  # the same rows, kept
    assert [r["status"] for r in audit if r["instrument_name"] == SILENT] == ["unrecoverable"]
    assert [r["reason"] for r in rows if r["detected_by"] == "daemon"] == ["daemon finding"]


def test_audit_trade_days_exact_findings(migrated_db_url, trades_days):
    res = resources(migrated_db_url)
    r16 = materialize([trade_gaps], "2026-08-16", res)
    assert mat_metadata(r16, "trade_gaps")["findings"] == 0
    r17 = materialize([trade_gaps], "2026-08-17", res)
    rows = gaps(migrated_db_url, "audit_day = '2026-08-17'")
    assert _summary(rows) == trades_days["expected_17"]
    meta = mat_metadata(r17, "trade_gaps")
    assert meta["by_kind"] == {"trade_seq": 3, "disconnect": 1}
    # seq holes are recoverable by trade_seq whatever their age; the time window is not
    # (older than 24 h, no history host).
    assert meta["recoverable_open_gaps"] == 3 and meta["unrecoverable_open_gaps"] == 1
    r17h = materialize([trade_gaps], "2026-08-17",
                       resources(migrated_db_url, history_url="http://127.0.0.1:9/api/v2"))
    assert mat_metadata(r17h, "trade_gaps")["recoverable_open_gaps"] == 4
    # a re-audit keeps the rows as they are: sequence holes too (their reason says "trade_seq
    # hole", their kind is trade_seq: the identity used to differ, so each re-audit replaced them)
    again = gaps(migrated_db_url, "audit_day = '2026-08-17'")
    assert [r["gap_id"] for r in again] == [r["gap_id"] for r in rows]
    assert (mat_metadata(r17h, "trade_gaps")["unchanged"],
            mat_metadata(r17h, "trade_gaps")["inserted"]) == (4, 0)


def test_audit_day_without_capture(migrated_db_url):
    result = materialize([trade_gaps], "2026-08-18", resources(migrated_db_url))
    assert _summary(gaps(migrated_db_url)) == [
        ("quotes", "*", D0818, D0818 + timedelta(days=1), None, None, "no_capture"),
        ("trades", "*", D0818, D0818 + timedelta(days=1), None, None, "no_capture"),
    ]
    assert mat_metadata(result, "trade_gaps")["by_kind"] == {"no_capture": 2}


def test_current_day_without_capture_keeps_its_rows_and_continues_after_resolution(migrated_db_url,
                                                                                     emu_trades):
    """The current day without capture, audited as the day goes on: one row per stream whose end
    follows now; once backfilled up to 06:00, only the part after 06:00 is open again (a backfill
    of the day no longer starts over from midnight)."""
    def audit(hour: int) -> WriteResult:
        with psycopg.connect(migrated_db_url) as conn:
            return write_findings(conn, audit_day(conn, "deribit", D0818,
                                                  now=D0818 + timedelta(hours=hour)))

    assert audit(3) == WriteResult(inserted=2, updated=0, unchanged=0, deleted=0, already_resolved=0)
    ids = [r["gap_id"] for r in gaps(migrated_db_url)]
    assert audit(6) == WriteResult(inserted=0, updated=2, unchanged=0, deleted=0, already_resolved=0)
    rows = gaps(migrated_db_url)
    assert [r["gap_id"] for r in rows] == ids
    assert _summary(rows) == [
        ("quotes", "*", D0818, D0818 + timedelta(hours=6), None, None, "no_capture"),
        ("trades", "*", D0818, D0818 + timedelta(hours=6), None, None, "no_capture"),
    ]
    report = backfill_day(migrated_db_url, "deribit", D0818.date(), rest_url=emu_trades.rest_url,
                          currency="BTC", kind="option,future", now=D0818 + timedelta(hours=6))
    assert (report.count("backfilled"), report.count("unrecoverable")) == (1, 1)
    assert audit(9) == WriteResult(inserted=2, updated=0, unchanged=0, deleted=0, already_resolved=0)
    assert audit(9) == WriteResult(inserted=0, updated=0, unchanged=2, deleted=0, already_resolved=0)
    rows = gaps(migrated_db_url)
    assert [(r["stream"], r["gap_start"], r["gap_end"], r["status"]) for r in rows] == [
        ("quotes", D0818, D0818 + timedelta(hours=6), "unrecoverable"),
        ("quotes", D0818 + timedelta(hours=6), D0818 + timedelta(hours=9), "open"),
        ("trades", D0818, D0818 + timedelta(hours=6), "backfilled"),
        ("trades", D0818 + timedelta(hours=6), D0818 + timedelta(hours=9), "open"),
    ]
    assert rows[3]["reason"] == ("no_capture: no quote, no live trade and no connection event; "
                                 "the part before 2026-08-18T06:00:00+00:00 is already resolved")
    # The nightly audit of the finished day: the open part ends at midnight.
    assert audit(30) == WriteResult(inserted=0, updated=2, unchanged=0, deleted=0, already_resolved=0)
    assert [r["gap_end"] for r in gaps(migrated_db_url, "status = 'open'")] == [D0818 + timedelta(days=1)] * 2


def test_quote_silence_across_midnight(migrated_db_url, deribit_dir):
    """Real rows of one instrument re-timed to a 2 s cadence around midnight with a 3.5 min hole
    (23:57:00 -> 00:00:30): the previous day reports its part, the next day the continuation."""
    from collector_daemon.rows import QUOTES
    from orch_data import CAPTURE_0405, Q_INSTR, Q_TS, capture_quote_rows, write

    base = [r for r in capture_quote_rows(deribit_dir / CAPTURE_0405) if r[Q_INSTR] == SILENT]
    d0 = int(D0406.timestamp() * 1_000_000)
    stamps = ([d0 - 600_000_000 + k * 2_000_000 for k in range(211)]      # 23:50:00 .. 23:57:00
              + [d0 + 30_000_000 + k * 2_000_000 for k in range(136)])    # 00:00:30 .. 00:05:00
    rows = [base[i % len(base)][:Q_TS] + (ts, ts + 1000) + base[i % len(base)][Q_TS + 2:]
            for i, ts in enumerate(stamps)]
    write(migrated_db_url, QUOTES, rows)
    res = resources(migrated_db_url)
    materialize([trade_gaps], "2021-04-05", res)
    materialize([trade_gaps], "2021-04-06", res)
    last_before = D0406 - timedelta(minutes=3)
    first_after = D0406 + timedelta(seconds=30)
    assert _summary(gaps(migrated_db_url)) == [
        ("quotes", SILENT, last_before, D0406, None, None, "quote_silence"),
        ("quotes", SILENT, D0406, first_after, None, None, "quote_silence"),
        ("quotes", SILENT, D0406 + timedelta(minutes=5), D0406 + timedelta(days=1), None, None,
         "quote_silence"),
    ]
    assert [r["audit_day"].isoformat() for r in gaps(migrated_db_url)] == [
        "2021-04-05", "2021-04-06", "2021-04-06"]
