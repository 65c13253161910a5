"""Verification of an exported (table, day) against the database (:data:`CHECKS`); the outcome
is recorded in ``export_manifest.verified_at``, which retention requires."""

import json
import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
import pyarrow.parquet as pq

from orchestration.lib.export.layout import (
    SCHEMA_VERSION,
    ExportError,
    TableLayout,
    Unit,
    day_filter,
    quote_ident,
    table_layout,
    unit_name,
    unit_order,
)
from orchestration.lib.export.manifest import ManifestRow, manifest_rows
from orchestration.lib.export.objectstore import ObjectStore

#: The checks :func:`verify_export` runs, with what each asserts.
CHECKS: dict[str, str] = {
    "row_count": "Rows in the Parquet files (footers, read from the store) equal the rows in "
                 "the database for that day, per venue (per venue and account for a private "
                 "table).",
    "objects": "Every object in the manifest exists with the recorded size and ETag (and, in a "
               "deep verification, sha256).",
    "schema": "Every file's schema equals the declared one (from the catalog) and carries the "
              "schema version.",
    "sample": "A random sample of rows read back from the files equals the database rows.",
}


@dataclass
class CheckOutcome:
    """Result of one check over every venue of a (table, day): ``passed`` and details
    (``failures``: human-readable reasons; ``metadata``: numbers for the UI)."""

    passed: bool = True
    failures: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.failures.append(reason)


def _same(a: Any, b: Any) -> bool:
    """Equality of two column values, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN
    return a == b


def _db_counts(conn: psycopg.Connection, layout: TableLayout, day: date) -> dict[Unit, int]:
    """Rows of the day per unit (venue, account_id; account_id None for a public table)."""
    account = quote_ident(layout.account_column) if layout.account_column else "NULL::bigint"
    return {(venue, acc): n for venue, acc, n in conn.execute(
        f"SELECT venue, {account}, count(*) FROM {quote_ident(layout.table)} "
        f"WHERE {day_filter(layout, day)} GROUP BY 1, 2").fetchall()}


def _sample_db_rows(conn: psycopg.Connection, layout: TableLayout, day: date,
                    keys: list[tuple]) -> dict[tuple, dict]:
    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (layout.table,)).fetchall())
    key_cols = ", ".join(quote_ident(c) for c in layout.key)
    arrays = ", ".join(f"%s::{types[c]}[]" for c in layout.key)
    cur = conn.execute(
        f"SELECT {layout.select_list()} FROM {quote_ident(layout.table)} "
        f"WHERE {day_filter(layout, day)} "
        f"AND ({key_cols}) IN (SELECT * FROM unnest({arrays}))",
        [list(column) for column in zip(*keys)])
    names = [d.name for d in cur.description]
    out = {}
    for row in cur:
        record = dict(zip(names, row))
        out[tuple(record[c] for c in layout.key)] = record
    return out


def verify_export(dsn: str, store: ObjectStore, table: str, day: date, *, deep: bool = True,
                  sample_rows: int = 200) -> dict[str, CheckOutcome]:
    """Check the export of (table, day) against the database; see :data:`CHECKS`.

    Every partition is checked on its own: per venue, and for a private table per (venue,
    account). Sets ``export_manifest.verified_at`` to now for every partition whose checks all
    pass and clears it for the others. ``deep`` downloads every object to compare its sha256
    (otherwise size and ETag only). ``sample_rows`` rows per partition are compared column by
    column (numeric and json columns as their PostgreSQL text, as the files hold them).

    Returns:
        check name -> outcome, over all partitions of the day.

    Raises:
        ExportError: the table does not exist.
    """
    outcomes = {name: CheckOutcome() for name in CHECKS}
    with psycopg.connect(dsn) as conn:
        layout = table_layout(conn, table)
        if layout is None:
            raise ExportError(f"table {table} does not exist")
        db_counts = _db_counts(conn, layout, day)
        manifests = {m.unit: m for m in manifest_rows(conn, table, day)}
        unit_ok: dict[Unit, bool] = {}
        for unit in sorted(set(db_counts) | set(manifests), key=unit_order):
            failed_before = {n: len(o.failures) for n, o in outcomes.items()}
            _verify_unit(conn, store, layout, day, unit, db_counts.get(unit, 0),
                         manifests.get(unit), outcomes, deep, sample_rows)
            unit_ok[unit] = all(len(o.failures) == failed_before[n]
                                for n, o in outcomes.items())
        for unit, m in manifests.items():
            conn.execute(
                "UPDATE export_manifest SET verified_at = CASE WHEN %s THEN now() END "
                "WHERE table_name = %s AND day = %s AND venue = %s "
                "AND account_id IS NOT DISTINCT FROM %s AND export_id = %s",
                (unit_ok[unit], table, day, unit[0], unit[1], m.export_id))
    outcomes["row_count"].metadata["database_rows"] = sum(db_counts.values())
    return outcomes


def _verify_unit(conn: psycopg.Connection, store: ObjectStore, layout: TableLayout, day: date,
                 unit: Unit, db_rows: int, manifest: ManifestRow | None,
                 outcomes: dict[str, CheckOutcome], deep: bool, sample_rows: int) -> None:
    where = f"{unit_name(unit)}/{layout.table}/{day}"
    count, objects, schema_check, sample = (outcomes[n] for n in CHECKS)
    if manifest is None:
        count.fail(f"{where}: {db_rows} rows in the database, no export")
        return
    document = store.get_bytes(manifest.manifest_key)
    stored = json.loads(document) if document is not None else None
    if stored is None or stored.get("export_id") != manifest.export_id:
        objects.fail(f"{where}: {manifest.manifest_key} is missing or belongs to another export")
        return
    parquet_rows = 0
    files = []
    for key, size, sha, etag in zip(manifest.object_keys, manifest.object_bytes,
                                    manifest.object_sha256, manifest.object_etags):
        head = store.head(key)
        if head is None:
            objects.fail(f"{key}: missing")
            continue
        if head.size != size or (etag is not None and head.etag != etag):
            objects.fail(f"{key}: size/ETag {head.size}/{head.etag}, recorded {size}/{etag}")
            continue
        if deep and store.sha256(key) != sha:
            objects.fail(f"{key}: sha256 differs from the manifest")
            continue
        with store.open(key, size) as fh:
            pf = pq.ParquetFile(fh)
            parquet_rows += pf.metadata.num_rows
            meta = pf.schema_arrow.metadata or {}
            if not pf.schema_arrow.remove_metadata().equals(layout.file_schema):
                schema_check.fail(f"{key}: schema differs from the declared one")
            elif meta.get(b"tickvault.schema_version") != str(SCHEMA_VERSION).encode():
                schema_check.fail(f"{key}: schema version {meta.get(b'tickvault.schema_version')}")
            files.append((key, size, pf.metadata.num_row_groups))
    objects.metadata["objects"] = objects.metadata.get("objects", 0) + len(manifest.object_keys)
    if not (parquet_rows == db_rows == manifest.source_rows):
        count.fail(f"{where}: {parquet_rows} rows in Parquet, {db_rows} in the database, "
                   f"{manifest.source_rows} at export time")
    count.metadata["parquet_rows"] = count.metadata.get("parquet_rows", 0) + parquet_rows
    if files and sample_rows > 0:
        _compare_sample(conn, store, layout, day, unit[0], files, manifest.export_id,
                        sample_rows, sample)


def _compare_sample(conn: psycopg.Connection, store: ObjectStore, layout: TableLayout, day: date,
                    venue: str, files: list[tuple[str, int, int]], export_id: str,
                    sample_rows: int, outcome: CheckOutcome) -> None:
    """Compare about ``sample_rows`` random rows (one random row group in each of up to three
    files; reproducible per export) with the database rows of the same key."""
    rng = random.Random(export_id)
    chosen = rng.sample(files, min(len(files), 3))
    per_file = max(1, sample_rows // len(chosen))
    rows: list[dict] = []
    for key, size, row_groups in chosen:
        with store.open(key, size) as fh:
            group = pq.ParquetFile(fh).read_row_group(rng.randrange(row_groups))
        picks = sorted(rng.sample(range(group.num_rows), min(group.num_rows, per_file)))
        rows.extend({"venue": venue, **r} for r in group.take(picks).to_pylist())
    db = _sample_db_rows(conn, layout, day, [tuple(r[c] for c in layout.key) for r in rows])
    mismatched = 0
    for row in rows:
        other = db.get(tuple(row[c] for c in layout.key))
        if other is None or any(not _same(row[c], other[c]) for c in layout.schema.names):
            mismatched += 1
    outcome.metadata["sampled_rows"] = outcome.metadata.get("sampled_rows", 0) + len(rows)
    if mismatched:
        outcome.fail(f"{mismatched} of {len(rows)} sampled rows differ from the database")

