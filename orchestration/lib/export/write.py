"""Writing an export (:func:`export_table_day`): spill and sort the day, refuse to shrink an
export in force, stream each venue's Parquet files into the store, then write the manifests and
``export_manifest`` rows and delete the previous export's objects."""

import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.lib.export.layout import (
    MANIFEST_NAME,
    ExportError,
    TableLayout,
    Unit,
    day_bounds,
    partition_prefix,
    start_of_day_us,
    table_layout,
    unit_name,
)
from orchestration.lib.export.manifest import (
    ExportedFile,
    PartitionExport,
    manifest_rows,
    record_export,
    stored_manifest,
)
from orchestration.lib.export.objectstore import ObjectStore
from orchestration.lib.export.spill import DaySpill, Range, sorted_range

_PART_RE = re.compile(r"part-(\d+)\.parquet$")


@dataclass(frozen=True)
class ExportSettings:
    """Tuning knobs of :func:`export_table_day`.

    Attributes:
        chunk_rows: rows sorted in memory at once; also the largest row group (except for one
            instrument's candles of a day, never split: at most 1,849 rows). Peak memory is
            about 3 x chunk_rows x row width (quotes: ~230 B per row in Arrow) plus two upload
            parts and ~250 MB of libraries.
        rows_per_file: a partition is split into ``part-<n>.parquet`` files of at most this many
            rows (file boundaries fall on range boundaries).
        zstd_level: zstd compression level.
        part_bytes: S3 multipart part size in bytes (S3 and B2 need >= 5 MiB except the last).
        spill_dir: existing directory for the temporary spill files (None: the system temp
            dir). Holds about the Arrow size of one day of one table (quotes: ~230 MB per
            million rows) while the export runs; each run uses and removes its own subdirectory.
        read_passes: the day is read in this many filtered SELECTs over consecutive instrument
            ranges (1: one unfiltered stream), so that a pass's ranges are sorted and encoded
            while the next pass is read; each pass costs the database one more scan of the
            day's rows (filter only). Same files whatever the value.
    """

    chunk_rows: int = 500_000
    rows_per_file: int = 20_000_000
    zstd_level: int = 3
    part_bytes: int = 64 * 2**20
    spill_dir: str | None = None
    read_passes: int = 2


def _next_part_number(keys: list[str]) -> int:
    numbers = [int(m.group(1)) for k in keys if (m := _PART_RE.search(k))]
    return max(numbers) + 1 if numbers else 0


def _prepared(spill: DaySpill, ids: list[int], layout: TableLayout,
              day: date) -> Iterator[tuple[Range, pa.Table]]:
    """The ranges ``spill.ranges[i]`` for i in ``ids`` (in order) with their sorted rows
    (without ``venue``), once each one's spill file is complete; ranges without rows are
    skipped. The next range is read and sorted on a second thread while the caller encodes the
    current one (pyarrow releases the GIL in both), so at most two sorted ranges are in
    memory."""
    day_start_us = start_of_day_us(day)

    def prepare(i: int) -> tuple[Range, pa.Table | None]:
        rng = spill.ready(i)
        if rng.path is None:
            return rng, None
        return rng, sorted_range(layout, rng, day_start_us)

    if not ids:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, ids[0])
        try:
            for following in [*ids[1:], None]:
                rng, table = pending.result()
                if following is not None:
                    pending = pool.submit(prepare, following)
                if table is not None:
                    yield rng, table
                del table
        except BaseException:  # also GeneratorExit: the consumer failed
            spill.stop()
            raise


def _write_files(store: ObjectStore, folder: str, number: int, schema: pa.Schema,
                 layout: TableLayout, tables: Iterator[tuple[Range, pa.Table]],
                 settings: ExportSettings, written: list[ExportedFile]) -> None:
    """Write the ``tables`` (one row group each) as ``part-<number>.parquet``,
    ``part-<number + 1>.parquet``, ...: a file takes consecutive ranges while their expected
    rows stay within ``settings.rows_per_file`` (a range is never split). Each committed file
    is appended to ``written``."""
    writer = sink = None
    key, file_rows, rows = "", 0, 0

    def finish() -> None:
        writer.close()
        stored = sink.commit()
        written.append(ExportedFile(key, rows, stored.size, stored.sha256, stored.etag))

    try:
        for rng, table in tables:
            if writer is None or file_rows + rng.rows > settings.rows_per_file:
                if writer is not None:
                    finish()
                key, file_rows, rows = f"{folder}part-{number}.parquet", 0, 0
                number += 1
                sink = store.writer(key, settings.part_bytes)
                writer = pq.ParquetWriter(
                    sink, schema, compression="zstd", compression_level=settings.zstd_level,
                    use_dictionary=True, write_statistics=True,
                    sorting_columns=pq.SortingColumn.from_ordering(
                        schema, [(c, "ascending") for c in layout.sort_key]))
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
            file_rows += rng.rows
            rows += table.num_rows
            del table
        if writer is not None:
            finish()
            writer = None
    except BaseException:
        if writer is not None:
            sink.abort()
        raise


def export_table_day(dsn: str, store: ObjectStore, prefix: str, table: str, day: date,
                     settings: ExportSettings = ExportSettings(),
                     now: datetime | None = None) -> list[PartitionExport] | None:
    """Export one UTC day of ``table``: one partition per venue with rows that day, or for a
    private table (an ``account_id`` column) one per (venue, account) with rows that day, under
    ``venue=<venue>/account=<account_id>/`` (one account's files share nothing with another's).

    Replaces any earlier export of those partitions: first every partition's new objects are
    uploaded, then the manifests are written, then their ``export_manifest`` rows
    (``verified_at`` NULL), then their previous objects are deleted. Returns None when the table
    does not exist, [] when it has no rows that day.

    Raises:
        ExportError: the day has not ended (``now``, default the current time), the table's
            shape is not exportable, or a partition's export in force (its ``_manifest.json`` or
            ``export_manifest`` row) holds more rows than the database holds now: retention
            dropped the day since, and replacing the archive would lose those rows (checked
            before anything is uploaded; the message names the partition and both counts). On
            any error every partition keeps its previous manifest and objects; the objects this
            run uploaded are deleted (best effort: what a failed delete or a killed process
            leaves is deleted by the next export of the partition).
    """
    now = now or datetime.now(UTC)
    if day_bounds(day)[1] > now:
        raise ExportError(f"{day} has not ended yet (UTC): export it after midnight")
    with psycopg.connect(dsn) as conn:
        layout = table_layout(conn, table)
    if layout is None:
        return None
    spill_dir = Path(tempfile.mkdtemp(prefix="tickvault-export-", dir=settings.spill_dir))
    try:
        with adbc.connect(dsn) as conn:
            spill = DaySpill(conn, layout, day, settings.chunk_rows, spill_dir,
                             settings.read_passes)
            try:
                source_rows = spill.source_rows
                folders = {u: partition_prefix(prefix, u[0], layout.table, day, u[1])
                           for u in source_rows}
                _refuse_shrinking(dsn, store, layout, day, folders, source_rows)
                previous = {u: store.list_keys(folder) for u, folder in folders.items()}
                spill.start()
                exports = _upload(store, layout, day, folders, previous, spill, settings)
            finally:
                spill.close()
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    with psycopg.connect(dsn) as conn:
        for export in exports:
            record_export(conn, export)
    for export in exports:
        keep = {f.key for f in export.files} | {export.manifest_key}
        store.delete([k for k in previous[export.unit] if k not in keep])
    return exports


def _refuse_shrinking(dsn: str, store: ObjectStore, layout: TableLayout, day: date,
                      folders: dict[Unit, str], source_rows: dict[Unit, int]) -> None:
    """Raise ExportError when the export in force of a partition (its ``_manifest.json`` or its
    ``export_manifest`` row, whichever holds more) has more rows than the database holds now.

    Rows only ever get added to a day (inserts are insert-if-absent), except by retention; so a
    smaller count means retention dropped the day (and, say, a backfill added a few rows back),
    and replacing the archive with what is left would delete the dropped rows for good.
    """
    with psycopg.connect(dsn) as conn:
        recorded = {m.unit: m.rows for m in manifest_rows(conn, layout.table, day)}
    for unit, folder in folders.items():
        in_store = (stored_manifest(store, folder) or {}).get("rows", 0)
        archived = max(in_store, recorded.get(unit, 0))
        if archived > source_rows[unit]:
            raise ExportError(
                f"{folder}: refusing to replace the export in force ({archived} rows: "
                f"{folder}{MANIFEST_NAME} {in_store}, export_manifest {recorded.get(unit, 0)}) "
                f"with the {source_rows[unit]} rows the database holds now; rows of the day "
                f"were dropped since (retention), re-exporting would lose them. To replace it "
                f"anyway, delete the partition's {MANIFEST_NAME} and export_manifest row first.")


def _upload(store: ObjectStore, layout: TableLayout, day: date, folders: dict[Unit, str],
            previous: dict[Unit, list[str]], spill: DaySpill,
            settings: ExportSettings) -> list[PartitionExport]:
    """Upload every partition's files (as the spill's ranges become ready), then write every
    partition's manifest; on an error delete this run's objects of each partition whose
    manifest in force is not this run's, and re-raise."""
    source_rows = spill.source_rows
    export_ids = {unit: uuid.uuid4().hex for unit in folders}
    written: dict[Unit, list[ExportedFile]] = {unit: [] for unit in folders}
    exports: list[PartitionExport] = []
    try:
        for unit, folder in folders.items():
            ids = [i for i, r in enumerate(spill.ranges) if r.unit == unit]
            _write_files(store, folder, _next_part_number(previous[unit]),
                         layout.schema_for(unit[0], day, unit[1]), layout,
                         _prepared(spill, ids, layout, day), settings, written[unit])
            export = PartitionExport(
                unit[0], layout.table, day, export_ids[unit], source_rows[unit],
                tuple(written[unit]), folder + MANIFEST_NAME, store.url, datetime.now(UTC),
                layout.file_schema, layout.sort_key, account_id=unit[1])
            if export.rows != source_rows[unit]:
                raise ExportError(f"{unit_name(unit)}/{layout.table}/{day}: wrote {export.rows} "
                                  f"rows, the database snapshot had {source_rows[unit]}")
            exports.append(export)
        for export in exports:
            store.put_bytes(export.manifest_key,
                            json.dumps(export.manifest(), indent=1).encode())
    except BaseException as exc:
        for unit, folder in folders.items():
            try:
                # Unless the manifest got written after all (a lost response), this run's
                # objects are garbage: the previous manifest stays in force and names none.
                if (stored_manifest(store, folder) or {}).get("export_id") != export_ids[unit]:
                    store.delete([f.key for f in written[unit]])
            except Exception as cleanup:
                exc.add_note(f"{folder}: objects of the failed export left in place ({cleanup!r});"
                             " the next export of the partition deletes them")
        raise
    return exports
