"""Nightly Parquet export of the tick tables to object storage (Backblaze B2, AWS S3, MinIO, or a
local directory when no bucket is configured), with its checks (its job, schedule and sensor
are in ``defs/jobs.py``, ``schedules.py`` and ``sensors.py``, with the others).

Partitions: date (UTC day, ``orchestration.partitions.daily``) x table (static, the tables in
``orchestration.lib.export.EXPORT_TABLES``: quotes, trades, candles and the tables the recorded
venues declare, e.g. Bybit's tickers, trades and private tables). A run exports one table for one
day; venues (and, for a private table, accounts) are levels of the object layout
(``venue=<v>/account=<id>/``), not partition dimensions. A table that does not exist in
the database yields no materialization (the run succeeds, says so, and its checks pass as
skipped).

The four checks run inside the asset, right after the upload, against what the store and the
database hold; their outcome is also stored in ``export_manifest.verified_at``, which retention
trusts.
"""

import os
from datetime import date

import dagster as dg
from pydantic import Field

from orchestration.lib.export import (
    CHECKS,
    EXPORT_TABLES,
    ExportError,
    ExportSettings,
    export_table_day,
    make_store,
    verify_export,
)
from orchestration.partitions import daily
from orchestration.resources import DatabaseResource, ObjectStorageResource

export_partitions = dg.MultiPartitionsDefinition(
    {"date": daily, "table": dg.StaticPartitionsDefinition(list(EXPORT_TABLES))})


class ExportConfig(dg.Config):
    """Tuning of one export run (defaults suit a day of ~15M quotes in < 1 GiB of memory)."""

    chunk_rows: int = Field(500_000, description="Rows sorted in memory at once = row group size.")
    rows_per_file: int = Field(20_000_000, description="Most rows in one part-<n>.parquet.")
    zstd_level: int = Field(3, description="zstd level of the Parquet pages.")
    part_mib: int = Field(64, description="Multipart upload part size, MiB (>= 5 for S3/B2).")
    deep_verify: bool = Field(True, description="Download every object to check its sha256.")
    sample_rows: int = Field(200, description="Rows per venue compared with the database.")
    spill_dir: str | None = Field(
        None, description="Directory for the temporary spill files (about the Arrow size of "
                          "the day: quotes ~230 MB per million rows); empty = "
                          "TICKVAULT_EXPORT_SPILL_DIR, else <object_storage.local_dir>/.spill. "
                          "Created when missing.")


def resolve_spill_dir(config: ExportConfig, object_storage: ObjectStorageResource) -> str:
    """The spill directory of a run, created when missing: ``config.spill_dir``, else the
    TICKVAULT_EXPORT_SPILL_DIR variable, else ``<local_dir>/.spill`` (on disk, next to the local
    export, rather than a /tmp that may be a tmpfs in RAM).

    Raises:
        ExportError: the directory cannot be created (the message names the setting).
    """
    path = (config.spill_dir or dg.EnvVar("TICKVAULT_EXPORT_SPILL_DIR").get_value(None)
            or os.path.join(object_storage.local_dir, ".spill"))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"spill directory {path!r} (run config spill_dir, else "
                          f"TICKVAULT_EXPORT_SPILL_DIR) cannot be created: {exc}") from exc
    return path


@dg.asset(
    partitions_def=export_partitions,
    group_name="export",
    kinds={"parquet", "s3", "timescaledb"},
    owners=["team:tickvault"],
    deps=["quotes", "trades", "candles"],
    output_required=False,
    check_specs=[dg.AssetCheckSpec(name, asset="parquet_export", description=description,
                                   partitions_def=export_partitions)
                 for name, description in CHECKS.items()],
)
def parquet_export(context: dg.AssetExecutionContext, config: ExportConfig,
                   database: DatabaseResource, object_storage: ObjectStorageResource):
    """One UTC day of one tick table as sorted zstd Parquet in object storage, per venue, verified against the database."""
    keys = context.partition_key.keys_by_dimension
    day, table = date.fromisoformat(keys["date"]), keys["table"]
    store = make_store(object_storage.bucket, object_storage.client, object_storage.local_dir)
    settings = ExportSettings(chunk_rows=config.chunk_rows, rows_per_file=config.rows_per_file,
                              zstd_level=config.zstd_level, part_bytes=config.part_mib * 2**20,
                              spill_dir=resolve_spill_dir(config, object_storage))
    exports = export_table_day(database.url, store, object_storage.prefix, table, day, settings)
    if exports is None:
        context.log.info(f"table {table} does not exist in the database: nothing to export")
        for name in CHECKS:  # nothing to check either; the checks' outputs are not optional
            yield dg.AssetCheckResult(check_name=name, passed=True,
                                      metadata={"skipped": f"table {table} does not exist"})
        return
    outcomes = verify_export(database.url, store, table, day, deep=config.deep_verify,
                             sample_rows=config.sample_rows)
    rows = sum(e.rows for e in exports)
    size = sum(e.bytes for e in exports)
    yield dg.MaterializeResult(
        metadata={
            "rows": rows,
            "bytes": size,
            "bytes_per_million_rows": round(size * 1e6 / rows) if rows else 0,
            "venues": sorted({e.venue for e in exports}),
            **({"accounts": [f"{e.venue}/{e.account_id}" for e in exports]}
               if any(e.account_id is not None for e in exports) else {}),
            "objects": [f.key for e in exports for f in e.files],
            "manifests": [e.manifest_key for e in exports],
            "storage_url": store.url,
            "spill_dir": settings.spill_dir,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=name, passed=outcome.passed,
                metadata={**outcome.metadata, "failures": "\n".join(outcome.failures) or "none"})
            for name, outcome in outcomes.items()],
    )
