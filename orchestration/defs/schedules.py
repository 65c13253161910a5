"""Schedules (UTC, default RUNNING: they work without anyone clicking in the UI)."""

from datetime import timedelta

import dagster as dg

from orchestration.defs.jobs import (
    PRIVATE_JOBS, gap_audit_job, nightly_export_job, nightly_job, retention_job, universe_job,
)
from orchestration.lib.export import EXPORT_TABLES
from orchestration.partitions import accounts_partitions

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


def build_private_nightly(venue: str) -> dg.ScheduleDefinition:
    """``<venue>_private_reconciliation_nightly``: at 01:00 UTC, one run of
    ``<venue>_private_reconciliation_job`` per account partition for yesterday (the accounts
    the ``accounts_partitions`` sensor registered); run key ``<venue>:<label>:<day>``."""

    @dg.schedule(name=f"{venue}_private_reconciliation_nightly", job=PRIVATE_JOBS[venue],
                 cron_schedule="0 1 * * *", execution_timezone="UTC", default_status=RUNNING,
                 description=f"At 01:00 UTC: reconcile yesterday of every {venue} account over REST.")
    def _nightly(context: dg.ScheduleEvaluationContext):
        day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
        labels = context.instance.get_dynamic_partitions(accounts_partitions(venue).name)
        if not labels:
            return dg.SkipReason(f"no {venue} account partition (the accounts_partitions sensor adds "
                                 "the enabled accounts)")
        return [dg.RunRequest(run_key=f"{venue}:{label}:{day}",
                              partition_key=dg.MultiPartitionKey({"date": day, "account": label}),
                              tags={"tickvault/trigger": "schedule"})
                for label in sorted(labels)]

    return _nightly


#: One nightly private reconciliation per venue with private data.
PRIVATE_SCHEDULES: list[dg.ScheduleDefinition] = [build_private_nightly(v) for v in PRIVATE_JOBS]

daily_retention_schedule = dg.ScheduleDefinition(
    name="daily_retention_schedule", job=retention_job, cron_schedule="0 3 * * *",
    execution_timezone="UTC", default_status=RUNNING,
    description="At 03:00 UTC: drop verified-exported days older than the retention age.")
