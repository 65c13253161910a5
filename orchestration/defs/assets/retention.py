"""Daily retention of the tick hypertables: days older than ``max_age_days`` are dropped only
where their Parquet export is verified; the others are kept and reported (asset metadata, a
warning per day, and a WARN check)."""

import dagster as dg
from pydantic import Field

from orchestration.defs.assets.export import parquet_export
from orchestration.lib.export import make_store
from orchestration.lib.retention import RETENTION_TABLES, apply_retention
from orchestration.resources import DatabaseResource, ObjectStorageResource


class RetentionConfig(dg.Config):
    """How much history stays in the database."""

    max_age_days: int = Field(30, description="Days kept in the database (whole UTC days, >= 1).")
    tables: list[str] = Field(list(RETENTION_TABLES), description="Tables retention applies to.")


@dg.asset(
    group_name="export",
    kinds={"timescaledb"},
    owners=["team:tickvault"],
    deps=[parquet_export],
    check_specs=[dg.AssetCheckSpec(
        "old_days_exported", asset="tick_retention",
        description="Every day past the retention age was exported, verified and dropped.")],
)
def tick_retention(context: dg.AssetExecutionContext, config: RetentionConfig,
                   database: DatabaseResource,
                   object_storage: ObjectStorageResource) -> dg.MaterializeResult:
    """Drops tick data older than the retention age from the database, only for days whose Parquet export is verified."""
    store = make_store(object_storage.bucket, object_storage.client, object_storage.local_dir)
    decisions = apply_retention(database.url, store, max_age_days=config.max_age_days,
                                tables=tuple(config.tables))
    dropped = [d for d in decisions if d.dropped]
    kept = [d for d in decisions if not d.dropped]
    for d in kept:
        context.log.warning(f"kept {d.table} {d.days[0]}..{d.days[-1]} ({d.rows} rows): {d.reason}")
    lines = ["| table | days | rows | reason |", "|---|---|---|---|"] + [
        f"| {d.table} | {d.days[0]}..{d.days[-1]} | {d.rows} | {d.reason} |" for d in kept]
    return dg.MaterializeResult(
        metadata={
            "dropped_days": sum(len(d.days) for d in dropped),
            "dropped_rows": sum(d.rows for d in dropped),
            "kept_days": sum(len(d.days) for d in kept),
            "kept": dg.MetadataValue.md("\n".join(lines)),
            "max_age_days": config.max_age_days,
        },
        check_results=[dg.AssetCheckResult(
            check_name="old_days_exported", passed=not kept,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"kept_days": sum(len(d.days) for d in kept)})],
    )
