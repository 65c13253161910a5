"""Sensors: observation of the collector's tables, backfill requests after audits, the
export of a day again once its candles are built, and bulk imports of files dropped into the
import folder."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from orchestration.defs.assets.stream import COLLECTOR_TABLES
from orchestration.defs.jobs import history_import_job, nightly_export_job, trades_backfill_job
from orchestration.lib.export import EXPORT_TABLES
from orchestration.lib.observe import table_stats
from orchestration.resources import DatabaseResource

RUNNING = dg.DefaultSensorStatus.RUNNING
TRADE_GAPS = dg.AssetKey("trade_gaps")
TRADES_BACKFILL = dg.AssetKey("trades_backfill")

_ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
           dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
#: Days whose last requested set of gaps the backfill sensor's cursor remembers.
_REMEMBERED_DAYS = 100


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


def _read_cursor(cursor: str | None) -> tuple[int | None, dict[str, str]]:
    """``(storage id of the last trade_gaps materialisation seen, day -> recoverable_gaps_key
    last requested)`` from the backfill sensor's cursor (JSON; a bare storage id from before
    the keys were kept is accepted)."""
    data = json.loads(cursor) if cursor else {}
    if isinstance(data, int):
        return data, {}
    return data.get("after"), dict(data.get("requested", {}))


@dg.sensor(job=trades_backfill_job, minimum_interval_seconds=60, default_status=RUNNING,
           description="Requests trades_backfill for a day whose audit found open gaps recoverable "
                       "from REST, once per set of gaps.")
def backfill_on_recoverable_gaps(context: dg.SensorEvaluationContext):
    """One run request per day and set of recoverable open gaps (``recoverable_gaps_key`` of the
    audit). Re-audits keep a gap's row, so the audits of the current day every 15 minutes
    request nothing new until the gaps change: a gap appears, or one resolved part of a gap
    still going on is followed by its continuation. The run key is that set too, so the daemon
    launches one run per set even if the cursor were lost."""
    after, requested = _read_cursor(context.cursor)
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
        key_entry = mat.metadata.get("recoverable_gaps_key")
        key = str(key_entry.value) if key_entry is not None else str(record.storage_id)
        if _run_plans(context.instance, record.run_id, TRADES_BACKFILL):
            skipped.append(f"{mat.partition}: backfilled by the auditing run itself")
            continue
        if requested.get(mat.partition) == key:
            skipped.append(f"{mat.partition}: a backfill of the same {n} open gap(s) was already requested")
            continue
        active = context.instance.get_runs(dg.RunsFilter(
            job_name=trades_backfill_job.name, statuses=_ACTIVE,
            tags={"dagster/partition": mat.partition}), limit=1)
        if active:
            skipped.append(f"{mat.partition}: a backfill run is already queued or running")
            continue
        requests.append(dg.RunRequest(
            run_key=f"trades_backfill:{mat.partition}:{key}",
            partition_key=mat.partition,
            tags={"tickvault/trigger": "recoverable_gaps", "tickvault/open_gaps": str(n),
                  "tickvault/gaps_key": key}))
        requested.pop(mat.partition, None)
        requested[mat.partition] = key
    if last is not None:
        for day in list(requested)[:-_REMEMBERED_DAYS]:
            del requested[day]
        context.update_cursor(json.dumps({"after": last, "requested": requested}))
    if not requests:
        return dg.SkipReason("; ".join(skipped) or "no audit with recoverable open gaps since the last tick")
    return requests


@dg.asset_sensor(asset_key=dg.AssetKey("candles"), job=nightly_export_job,
                 default_status=RUNNING,
                 description="When a day's candles are built (the nightly job runs them after the "
                             "REST backfill), export that day again, every table: the archive then "
                             "holds the backfilled trades and the candles. Exports are idempotent.")
def export_after_candles(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    day = asset_event.dagster_event.partition if asset_event.dagster_event else None
    if not day:
        return
    for table in EXPORT_TABLES:
        yield dg.RunRequest(run_key=f"parquet_export:{day}:{table}:after-candles:{asset_event.run_id}",
                            partition_key=dg.MultiPartitionKey({"date": day, "table": table}))


#: Folder watched by :func:`history_import_folder`: one sub-folder per importer
#: (``tickvault.history.IMPORTERS``), e.g. ``$TICKVAULT_IMPORT_DIR/<importer>/<file or zip>``.
IMPORT_DIR_VARIABLE = "TICKVAULT_IMPORT_DIR"
#: A file changed more recently than this (s) may still be being copied: left for a later tick.
IMPORT_SETTLE_S = 10.0


@dg.sensor(job=history_import_job, minimum_interval_seconds=60, default_status=RUNNING,
           description="Imports each file (CSV, zip or folder) dropped into $TICKVAULT_IMPORT_DIR/"
                       "<importer>/, once per version (name, size, mtime); the import's summary "
                       "is the materialisation's metadata.")
def history_import_folder(context: dg.SensorEvaluationContext):
    """One ``history_import`` run per new or changed entry of an importer's sub-folder of
    ``$TICKVAULT_IMPORT_DIR`` (run key: importer, name, size and mtime, so a file is imported
    once and again only when it changes; the import itself is idempotent anyway). Entries changed
    within :data:`IMPORT_SETTLE_S` wait for the next tick. Rejected lines go to
    ``<dir>/rejects/<importer>-<name>.csv``."""
    from tickvault.history import IMPORTERS

    root = os.environ.get(IMPORT_DIR_VARIABLE)
    if not root:
        return dg.SkipReason(f"{IMPORT_DIR_VARIABLE} is not set: no import folder to watch")
    base = Path(root)
    if not base.is_dir():
        return dg.SkipReason(f"{IMPORT_DIR_VARIABLE}={root} is not a folder")
    now = time.time()
    requests = []
    for importer in IMPORTERS:
        folder = base / importer
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            st = entry.stat()
            if now - st.st_mtime < IMPORT_SETTLE_S:
                continue
            config = {"importer": importer, "path": str(entry),
                      "rejects_path": str(base / "rejects" / f"{importer}-{entry.name}.csv")}
            requests.append(dg.RunRequest(
                run_key=f"{importer}:{entry.name}:{st.st_size}:{st.st_mtime_ns}",
                run_config={"ops": {"history_import": {"config": config}}},
                tags={"tickvault/import": f"{importer}/{entry.name}"}))
    return requests or dg.SkipReason("no new file in the import folders")
