"""Sensors: observation of the collector's tables, backfill requests after audits, the
account partitions of the private assets, the export of a day again once its candles are
built, and bulk imports of files dropped into the import folder."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from orchestration.defs.assets.private import PRIVATE_VENUES
from orchestration.defs.assets.stream import COLLECTOR_TABLES, VENUE_TABLES
from orchestration.defs.jobs import history_import_job, nightly_export_job, trades_backfill_job
from orchestration.lib.export import EXPORT_TABLES
from orchestration.lib.observe import table_stats, table_venues
from orchestration.partitions import VENUES, accounts_partitions, venue_key
from orchestration.resources import DatabaseResource

RUNNING = dg.DefaultSensorStatus.RUNNING

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
           description="Records freshness and row counts of the collector's tables (shared and "
                       "per venue) as observations, per venue for stream tables.")
def collector_tables_observer(context: dg.SensorEvaluationContext,
                              database: DatabaseResource) -> dg.SensorResult:
    """One observation per collector table (the shared ones and each recorded venue's own:
    ``COLLECTOR_TABLES + VENUE_TABLES``): ``rows_estimate``, ``rows_last_hour``, ``latest``,
    ``lag_s``, and for a stream table ``<venue>/rows_last_hour`` (``<venue>/latest``,
    ``<venue>/lag_s`` when it has a row in the last hour) for each venue writing it."""
    events = []
    writers = table_venues(VENUES)
    with database.connect() as conn:
        for spec in COLLECTOR_TABLES + VENUE_TABLES:
            table = spec.metadata["table"]
            s = table_stats(conn, table, spec.metadata["time_column"], writers.get(table, ()))
            meta = {"rows_estimate": s.rows_estimate, "rows_last_hour": s.rows_last_hour}
            if s.latest is not None:
                meta["latest"] = s.latest.isoformat()
                meta["lag_s"] = round(s.lag_s, 3)
                meta["dagster/last_updated_timestamp"] = dg.MetadataValue.timestamp(s.latest)
            for venue, v in s.by_venue.items():
                meta[f"{venue}/rows_last_hour"] = v.rows_last_hour
                if v.latest is not None:
                    meta[f"{venue}/latest"] = v.latest.isoformat()
                    meta[f"{venue}/lag_s"] = round(v.lag_s, 3)
            events.append(dg.AssetObservation(asset_key=spec.key, metadata=meta))
    return dg.SensorResult(asset_events=events)


def _read_cursor(cursor: str | None) -> tuple[dict[str, int], dict[str, str]]:
    """``(venue -> storage id of the last <venue>/trade_gaps materialisation seen, "venue:day" ->
    recoverable_gaps_key last requested)`` from the backfill sensor's cursor (JSON)."""
    data = json.loads(cursor) if cursor else {}
    after = data.get("after") if isinstance(data, dict) else None
    return (dict(after) if isinstance(after, dict) else {}), dict(data.get("requested", {}))


@dg.sensor(job=trades_backfill_job, minimum_interval_seconds=60, default_status=RUNNING,
           description="Requests <venue>/trades_backfill for a day whose audit found open gaps "
                       "recoverable from REST, once per venue and set of gaps.")
def backfill_on_recoverable_gaps(context: dg.SensorEvaluationContext):
    """One run request per venue, day and set of recoverable open gaps (``recoverable_gaps_key``
    of ``<venue>/trade_gaps``), selecting only that venue's ``trades_backfill``. Re-audits keep
    a gap's row, so the audits of the current day every 15 minutes request nothing new until
    the gaps change: a gap appears, or one resolved part of a gap still going on is followed by
    its continuation. The run key is that set too, so the daemon launches one run per set even
    if the cursor were lost."""
    after, requested = _read_cursor(context.cursor)
    requests, skipped = [], []
    for venue in VENUES:
        audit, backfill = venue_key(venue, "trade_gaps"), venue_key(venue, "trades_backfill")
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=audit, after_storage_id=after.get(venue)), limit=100,
            ascending=True)
        for record in result.records:
            after[venue] = record.storage_id
            mat = record.asset_materialization
            if mat is None or mat.partition is None:
                continue
            entry = mat.metadata.get("recoverable_open_gaps")
            n = int(entry.value) if entry is not None else 0
            if n <= 0:
                continue
            key_entry = mat.metadata.get("recoverable_gaps_key")
            key = str(key_entry.value) if key_entry is not None else str(record.storage_id)
            where = f"{venue} {mat.partition}"
            if _run_plans(context.instance, record.run_id, backfill):
                skipped.append(f"{where}: backfilled by the auditing run itself")
                continue
            if requested.get(f"{venue}:{mat.partition}") == key:
                skipped.append(f"{where}: a backfill of the same {n} open gap(s) was already requested")
                continue
            active = context.instance.get_runs(dg.RunsFilter(
                job_name=trades_backfill_job.name, statuses=_ACTIVE,
                tags={"dagster/partition": mat.partition, "tickvault/venue": venue}), limit=1)
            if active:
                skipped.append(f"{where}: a backfill run is already queued or running")
                continue
            requests.append(dg.RunRequest(
                run_key=f"trades_backfill:{venue}:{mat.partition}:{key}",
                partition_key=mat.partition, asset_selection=[backfill],
                tags={"tickvault/trigger": "recoverable_gaps", "tickvault/venue": venue,
                      "tickvault/open_gaps": str(n), "tickvault/gaps_key": key}))
            requested.pop(f"{venue}:{mat.partition}", None)
            requested[f"{venue}:{mat.partition}"] = key
    if after:
        for day in list(requested)[:-_REMEMBERED_DAYS * max(1, len(VENUES))]:
            del requested[day]
        context.update_cursor(json.dumps({"after": after, "requested": requested}))
    if not requests:
        return dg.SkipReason("; ".join(skipped) or "no audit with recoverable open gaps since the last tick")
    return requests


def build_accounts_partitions_sensor(venues: tuple[str, ...]) -> dg.SensorDefinition:
    """The ``accounts_partitions`` sensor for ``venues`` (those with private data): every
    minute, per venue, adds a partition to ``<venue>_accounts`` for every enabled account label
    of that venue in ``accounts`` and deletes the partitions of labels no longer enabled
    (disabled, removed, renamed; their past materialisations stay in the history). Requests no
    run: the nightly schedule and UI backfills launch the reconciliations."""

    @dg.sensor(name="accounts_partitions", minimum_interval_seconds=60, default_status=RUNNING,
               description="Keeps the account partitions of the private assets in line with the "
                           "enabled rows of the accounts table (one partition per account label).")
    def _accounts(context: dg.SensorEvaluationContext,
                  database: DatabaseResource) -> dg.SensorResult | dg.SkipReason:
        if not venues:
            return dg.SkipReason("no recorded venue records private data")
        enabled: dict[str, set[str]] = {v: set() for v in venues}
        with database.connect() as conn:
            for venue, label in conn.execute(
                    "SELECT venue, label FROM accounts WHERE enabled AND venue = ANY(%s)", (list(venues),)):
                enabled[venue].add(label)
        return _partition_changes(context, enabled)

    return _accounts


#: Substrings a dynamic partition key (or a part of a multi-partition key) cannot hold.
UNUSABLE_IN_PARTITION_KEYS = ("|", ",", "[", "]", "...", "\n", "\r", "\t", "\0")


def _partition_changes(context: dg.SensorEvaluationContext,
                       enabled: dict[str, set[str]]) -> dg.SensorResult | dg.SkipReason:
    """The dynamic-partition requests that make each ``<venue>_accounts`` equal ``enabled[venue]``."""
    requests, changes = [], []
    for venue, labels in enabled.items():
        unusable = sorted(x for x in labels if any(c in x for c in UNUSABLE_IN_PARTITION_KEYS))
        if unusable:   # the account is recorded; only its Dagster partition cannot exist
            context.log.warning(f"{venue} account label(s) {unusable} contain a character Dagster "
                                f"partition keys refuse ({UNUSABLE_IN_PARTITION_KEYS}): rename them "
                                "(UPDATE accounts SET label = ...) to reconcile them from Dagster")
            labels = labels - set(unusable)
        parts = accounts_partitions(venue)
        have = set(context.instance.get_dynamic_partitions(parts.name))
        added, removed = sorted(labels - have), sorted(have - labels)
        if added:
            requests.append(parts.build_add_request(added))
            changes.append(f"{venue}: +{', '.join(added)}")
        if removed:
            requests.append(parts.build_delete_request(removed))
            changes.append(f"{venue}: -{', '.join(removed)}")
    if not requests:
        return dg.SkipReason("account partitions match the enabled accounts")
    context.log.info("account partitions: " + "; ".join(changes))
    return dg.SensorResult(dynamic_partitions_requests=requests)


accounts_partitions_sensor = build_accounts_partitions_sensor(PRIVATE_VENUES)


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
