"""Schedules (UTC, default RUNNING: they work without anyone clicking in the UI)."""

from datetime import timedelta

import dagster as dg

from orchestration.defs.jobs import (
    gap_audit_job, nightly_export_job, nightly_job, retention_job, universe_job,
)
from orchestration.lib.export import EXPORT_TABLES

RUNNING = dg.DefaultScheduleStatus.RUNNING

universe_hourly = dg.ScheduleDefinition(
    name="universe_hourly", job=universe_job, cron_schedule="0 * * * *",
    execution_timezone="UTC", default_status=RUNNING,
    description="Refresh the instrument universe every hour.")


@dg.schedule(job=gap_audit_job, cron_schedule="*/15 * * * *", execution_timezone="UTC",
             default_status=RUNNING, description="Gap audit of the current UTC day every 15 minutes.")
def gap_audit_every_15_minutes(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    tick = context.scheduled_execution_time
    day = tick.date().isoformat()
    return dg.RunRequest(run_key=f"gap_audit:{tick.isoformat()}", partition_key=day,
                         tags={"tickvault/trigger": "schedule"})


@dg.schedule(job=nightly_job, cron_schedule="30 0 * * *", execution_timezone="UTC",
             default_status=RUNNING,
             description="At 00:30 UTC: final audit, REST backfill, candles and checks of yesterday.")
def nightly_yesterday(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    tick = context.scheduled_execution_time
    day = (tick - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"nightly:{day}", partition_key=day,
                         tags={"tickvault/trigger": "schedule"})


@dg.schedule(job=nightly_export_job, cron_schedule="30 0 * * *", execution_timezone="UTC",
             default_status=RUNNING,
             description="At 00:30 UTC: export yesterday, one run per table.")
def nightly_export_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return [dg.RunRequest(run_key=f"parquet_export:{day}:{table}",
                          partition_key=dg.MultiPartitionKey({"date": day, "table": table}))
            for table in EXPORT_TABLES]


daily_retention_schedule = dg.ScheduleDefinition(
    name="daily_retention_schedule", job=retention_job, cron_schedule="0 3 * * *",
    execution_timezone="UTC", default_status=RUNNING,
    description="At 03:00 UTC: drop verified-exported days older than the retention age.")
