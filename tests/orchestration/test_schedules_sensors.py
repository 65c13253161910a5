"""Schedules evaluated with build_schedule_context; sensors with build_sensor_context."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from orch_dagster import backfill_day, gaps, mat_metadata, materialize, resources, trade_gaps, trades_backfill
from collector_daemon.core import days
from orchestration.resources import DatabaseResource


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    os.environ.setdefault("TICKVAULT_DATABASE_URL", "postgresql://localhost/unused")
    from orchestration.definitions import defs as build
    return build()


def _tick(defs, name: str, when: datetime) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def(name)
    with dg.build_schedule_context(scheduled_execution_time=when,
                                   repository_def=defs.get_repository_def()) as ctx:
        return list(schedule.evaluate_tick(ctx).run_requests or [])


@pytest.mark.parametrize("when, day", [
    (datetime(2026, 8, 17, 0, 0, tzinfo=UTC), "2026-08-17"),
    (datetime(2026, 8, 17, 13, 45, tzinfo=UTC), "2026-08-17"),
    (datetime(2026, 8, 17, 23, 45, tzinfo=UTC), "2026-08-17"),
])
def test_gap_audit_schedule_targets_current_day(defs, when, day):
    [req] = _tick(defs, "gap_audit_every_15_minutes", when)
    assert req.partition_key == day
    assert defs.resolve_schedule_def("gap_audit_every_15_minutes").cron_schedule == "*/15 * * * *"


@pytest.mark.parametrize("when, day", [
    (datetime(2026, 8, 18, 0, 30, tzinfo=UTC), "2026-08-17"),
    (datetime(2026, 1, 1, 0, 30, tzinfo=UTC), "2025-12-31"),
])
def test_nightly_schedule_targets_yesterday(defs, when, day):
    [req] = _tick(defs, "nightly_yesterday", when)
    assert req.partition_key == day and req.run_key == f"nightly:{day}"
    job = defs.resolve_job_def("nightly_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "deribit/trade_gaps", "deribit/trades_backfill", "candles"}
    assert len(job.asset_layer.asset_graph.asset_check_keys) == 12   # with deribit's trade_coverage


def test_universe_schedule_is_hourly(defs):
    [req] = _tick(defs, "universe_hourly", datetime(2026, 8, 17, 5, 0, tzinfo=UTC))
    assert req.partition_key is None
    assert defs.resolve_schedule_def("universe_hourly").cron_schedule == "0 * * * *"


def test_backfill_sensor_requests_days_with_recoverable_gaps(defs, migrated_db_url, trades_days,
                                                             emu_trades):
    instance = dg.DagsterInstance.ephemeral()
    res = resources(migrated_db_url)
    materialize([trade_gaps], "2026-08-16", res, instance=instance)  # nothing to recover
    materialize([trade_gaps], "2026-08-17", res, instance=instance)  # 3 seq holes
    sensor = defs.resolve_sensor_def("backfill_on_recoverable_gaps")
    with dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def()) as ctx:
        data = sensor.evaluate_tick(ctx)
    [req] = data.run_requests
    assert req.partition_key == "2026-08-17"
    assert req.tags["tickvault/open_gaps"] == "3"
    assert req.run_key.startswith("trades_backfill:deribit:2026-08-17:")
    assert req.asset_selection == [dg.AssetKey(["deribit", "trades_backfill"])]
    assert sensor.job_name == "trades_backfill_job"
    # Next tick from the new cursor: nothing new.
    with dg.build_sensor_context(instance=instance, cursor=data.cursor,
                                 repository_def=defs.get_repository_def()) as ctx:
        again = sensor.evaluate_tick(ctx)
    assert not again.run_requests and again.skip_message
    # An audit inside a run that also backfills (the nightly job) needs no extra run.
    materialize([trade_gaps, trades_backfill], "2026-08-17",
                resources(migrated_db_url, emu_trades.rest_url, currency="BTC"),
                instance=instance)
    with dg.build_sensor_context(instance=instance, cursor=data.cursor,
                                 repository_def=defs.get_repository_def()) as ctx:
        third = sensor.evaluate_tick(ctx)
    assert not third.run_requests
    assert "backfilled by the auditing run itself" in third.skip_message


def test_reaudits_of_today_keep_an_unresolved_disconnect_and_request_one_backfill(
        defs, migrated_db_url, quotes_day, emu_trades, monkeypatch):
    """2021-04-05 audited as the current day (clock pinned) every 15 minutes after a disconnect
    that is never resubscribed: the disconnect stays one row per stream whose end follows the
    clock, and the sensor requests one backfill for it, not one per audit. Once that backfill
    resolved it up to its end, the part after it is a new gap and gets one new request."""
    instance = dg.DagsterInstance.ephemeral()
    res = resources(migrated_db_url)
    sensor = defs.resolve_sensor_def("backfill_on_recoverable_gaps")
    disconnect = quotes_day["disconnect"]
    now1, now2, now3 = (disconnect + timedelta(minutes=m) for m in (10, 25, 40))
    cursor = None

    def audit(now: datetime) -> tuple[dict, list[dict]]:
        monkeypatch.setattr(days, "utcnow", lambda: now)
        meta = mat_metadata(materialize([trade_gaps], "2021-04-05", res, instance=instance),
                            "trade_gaps")
        return meta, gaps(migrated_db_url, "reason LIKE 'unresolved_disconnect:%%'")

    def tick() -> dg.SensorExecutionData:
        nonlocal cursor
        with dg.build_sensor_context(instance=instance, cursor=cursor,
                                     repository_def=defs.get_repository_def()) as ctx:
            data = sensor.evaluate_tick(ctx)
        cursor = data.cursor
        return data

    meta, first = audit(now1)
    assert [(r["stream"], r["gap_start"], r["gap_end"], r["status"]) for r in first] == [
        ("quotes", disconnect, now1, "open"), ("trades", disconnect, now1, "open")]
    trades_gap = first[1]["gap_id"]
    assert meta["recoverable_open_gaps"] == 1 and meta["recoverable_gap_ids"] == [trades_gap]
    [req] = tick().run_requests
    assert req.partition_key == "2021-04-05" and req.tags["tickvault/open_gaps"] == "1"
    assert req.run_key == f"trades_backfill:deribit:2021-04-05:{meta['recoverable_gaps_key']}"

    meta, second = audit(now2)
    assert [(r["gap_id"], r["gap_start"], r["gap_end"]) for r in second] == [
        (r["gap_id"], disconnect, now2) for r in first]
    # no_rows also ends at now; the quote silence between two quotes is unchanged.
    assert (meta["inserted"], meta["updated"], meta["unchanged"],
            meta["deleted_open"]) == (0, 3, 1, 0)
    assert len(gaps(migrated_db_url)) == 4
    again = tick()
    assert not again.run_requests
    assert again.skip_message == "deribit 2021-04-05: a backfill of the same 1 open gap(s) was already requested"

    # The requested run (the backfill at now2, REST from the emulator) resolves both rows.
    report = backfill_day(migrated_db_url, "deribit", "2021-04-05", rest_url=emu_trades.rest_url,
                          now=now2)
    assert {o.gap.gap_id: o.status for o in report.outcomes}[trades_gap] == "backfilled"
    meta, third = audit(now3)
    assert [(r["stream"], r["gap_start"], r["gap_end"], r["status"]) for r in third] == [
        ("quotes", disconnect, now2, "unrecoverable"), ("quotes", now2, now3, "open"),
        ("trades", disconnect, now2, "backfilled"), ("trades", now2, now3, "open")]
    assert meta["recoverable_gap_ids"] == [third[3]["gap_id"]]
    [req3] = tick().run_requests
    assert req3.run_key == f"trades_backfill:deribit:2021-04-05:{meta['recoverable_gaps_key']}" != req.run_key


def test_observation_sensor_records_freshness_and_counts(defs, migrated_db_url, trades_days):
    sensor = defs.resolve_sensor_def("collector_tables_observer")
    with dg.build_sensor_context(resources={"database": DatabaseResource(url=migrated_db_url)}) as ctx:
        data = sensor.evaluate_tick(ctx)
    obs = {e.asset_key.to_user_string(): e for e in data.asset_events}
    assert set(obs) == {"quotes", "trades", "connection_events", "rejected_messages", "collector_status"}
    trades = {k: v.value for k, v in obs["trades"].metadata.items()}
    assert trades["rows_estimate"] == len(trades_days["live"])
    last = max(t.timestamp for t in trades_days["live"])
    assert trades["latest"] == datetime.fromtimestamp(last / 1000, UTC).isoformat()
    assert trades["dagster/last_updated_timestamp"] == pytest.approx(last / 1000)
    assert {k: v.value for k, v in obs["quotes"].metadata.items()} == {
        "rows_estimate": 0, "rows_last_hour": 0, "deribit/rows_last_hour": 0}
    assert {k: v.value for k, v in obs["connection_events"].metadata.items()}["rows_estimate"] == 4


def test_export_follows_the_nightly_candles(migrated_db_url, deribit_dir):
    """After candles of a day are materialised, that day is exported again (every table)."""
    import dagster as dg

    from orch_dagster import candles, materialize, resources
    from orch_data import CYRI113_CSV, cyri113_trades, trade_rows, write
    from orchestration.defs.sensors import export_after_candles
    from orchestration.lib.export import EXPORT_TABLES
    from collector_daemon.rows import TRADES

    write(migrated_db_url, TRADES, trade_rows(cyri113_trades(deribit_dir / CYRI113_CSV)))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize([candles], "2026-08-17", resources(migrated_db_url), instance=instance).success
    from orchestration.definitions import defs
    requests = list(export_after_candles.evaluate_tick(dg.build_sensor_context(
        instance=instance, definitions=defs())).run_requests)
    assert sorted(r.partition_key for r in requests) == sorted(
        dg.MultiPartitionKey({"date": "2026-08-17", "table": t}) for t in EXPORT_TABLES)
