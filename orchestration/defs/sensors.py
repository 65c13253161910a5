"""Sensors: observation of the collector's tables, and backfill requests after audits."""

import dagster as dg

from orchestration.defs.assets.stream import COLLECTOR_TABLES
from orchestration.defs.jobs import trades_backfill_job
from orchestration.lib.observe import table_stats
from orchestration.resources import DatabaseResource

RUNNING = dg.DefaultSensorStatus.RUNNING
TRADE_GAPS = dg.AssetKey("trade_gaps")
TRADES_BACKFILL = dg.AssetKey("trades_backfill")

_ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
           dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _run_plans(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> bool:
    """True when run ``run_id`` planned to materialise ``key`` (e.g. the nightly job)."""
    planned = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
    return any(r.event_log_entry.dagster_event.asset_key == key for r in planned)


@dg.sensor(minimum_interval_seconds=60, default_status=RUNNING,
           description="Records freshness and row counts of the collector's tables as observations.")
def collector_tables_observer(context: dg.SensorEvaluationContext,
                              database: DatabaseResource) -> dg.SensorResult:
    events = []
    with database.connect() as conn:
        for spec in COLLECTOR_TABLES:
            s = table_stats(conn, spec.metadata["table"])
            meta = {"rows_estimate": s.rows_estimate, "rows_last_hour": s.rows_last_hour}
            if s.latest is not None:
                meta["latest"] = s.latest.isoformat()
                meta["lag_s"] = round(s.lag_s, 3)
                meta["dagster/last_updated_timestamp"] = dg.MetadataValue.timestamp(s.latest)
            events.append(dg.AssetObservation(asset_key=spec.key, metadata=meta))
    return dg.SensorResult(asset_events=events)


@dg.sensor(job=trades_backfill_job, minimum_interval_seconds=60, default_status=RUNNING,
           description="Requests trades_backfill for a day whose audit found open gaps recoverable from REST.")
def backfill_on_recoverable_gaps(context: dg.SensorEvaluationContext):
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TRADE_GAPS, after_storage_id=after), limit=100,
        ascending=True)
    requests, skipped = [], []
    last = after
    for record in result.records:
        last = record.storage_id
        mat = record.asset_materialization
        if mat is None or mat.partition is None:
            continue
        entry = mat.metadata.get("recoverable_open_gaps")
        n = int(entry.value) if entry is not None else 0
        if n <= 0:
            continue
        if _run_plans(context.instance, record.run_id, TRADES_BACKFILL):
            skipped.append(f"{mat.partition}: backfilled by the auditing run itself")
            continue
        active = context.instance.get_runs(dg.RunsFilter(
            job_name=trades_backfill_job.name, statuses=_ACTIVE,
            tags={"dagster/partition": mat.partition}), limit=1)
        if active:
            skipped.append(f"{mat.partition}: a backfill run is already queued or running")
            continue
        requests.append(dg.RunRequest(
            run_key=f"trades_backfill:{mat.partition}:{record.storage_id}",
            partition_key=mat.partition,
            tags={"tickvault/trigger": "recoverable_gaps", "tickvault/open_gaps": str(n)}))
    if last is not None:
        context.update_cursor(str(last))
    if not requests:
        return dg.SkipReason("; ".join(skipped) or "no audit with recoverable open gaps since the last tick")
    return requests
