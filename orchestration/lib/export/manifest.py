"""What an export records: the ``_manifest.json`` document written into each partition folder
and the ``export_manifest`` row (schema/0007.export_manifest.sql, account_id from
0013.export_manifest_accounts.sql) of each (venue, table, day) or, for a private table, each
(venue, account, table, day)."""

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
import pyarrow as pa

from orchestration.lib.export.layout import MANIFEST_NAME, SCHEMA_VERSION, Unit
from orchestration.lib.export.objectstore import ObjectStore


@dataclass(frozen=True)
class ExportedFile:
    """One Parquet object of a partition: rows, size in bytes, sha256 (hex) and the server's
    ETag (None on a local store)."""

    key: str
    rows: int
    bytes: int
    sha256: str
    etag: str | None


@dataclass(frozen=True)
class PartitionExport:
    """The outcome of exporting one (venue, table, day), or one (venue, account, table, day) of
    a private table: what ``_manifest.json`` and the ``export_manifest`` row record.
    ``source_rows`` is the database's count in the export's snapshot; ``rows`` what the files
    hold (always equal: the export fails otherwise); ``account_id`` None for a public table."""

    venue: str
    table: str
    day: date
    export_id: str
    source_rows: int
    files: tuple[ExportedFile, ...]
    manifest_key: str
    storage_url: str
    exported_at: datetime
    schema: pa.Schema
    sort_key: tuple[str, ...]
    account_id: int | None = None

    @property
    def unit(self) -> Unit:
        """(venue, account_id): the partition unit."""
        return self.venue, self.account_id

    @property
    def rows(self) -> int:
        """Rows in the partition's files."""
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        """Size of the partition's files in bytes (without the manifest)."""
        return sum(f.bytes for f in self.files)

    def manifest(self) -> dict[str, Any]:
        """The JSON document stored as ``_manifest.json``."""
        return {
            "format": "tickvault-parquet-export",
            "schema_version": SCHEMA_VERSION,
            "export_id": self.export_id,
            "venue": self.venue,
            **({"account_id": self.account_id} if self.account_id is not None else {}),
            "table": self.table,
            "date": self.day.isoformat(),
            "exported_at": self.exported_at.isoformat(),
            "source_rows": self.source_rows,
            "rows": self.rows,
            "bytes": self.bytes,
            "sort_key": list(self.sort_key),
            "columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable}
                        for f in self.schema],
            "files": [{"key": f.key, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256,
                       "etag": f.etag} for f in self.files],
        }


def stored_manifest(store: ObjectStore, folder: str) -> dict[str, Any] | None:
    """The ``_manifest.json`` document of the partition ``folder`` (as from
    :func:`partition_prefix`), or None when it is missing or not valid JSON."""
    document = store.get_bytes(folder + MANIFEST_NAME)
    try:
        return json.loads(document) if document is not None else None
    except ValueError:
        return None


def record_export(conn: psycopg.Connection, export: PartitionExport) -> None:
    """Insert or replace the ``export_manifest`` row of the partition (``verified_at`` NULL)."""
    conn.execute(
        "INSERT INTO export_manifest (venue, account_id, table_name, day, export_id, "
        "  schema_version, source_rows, rows, bytes, object_keys, object_bytes, object_sha256, "
        "  object_etags, manifest_key, storage_url, exported_at, verified_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL) "
        "ON CONFLICT (table_name, day, venue, account_id) DO UPDATE SET "
        "  export_id = EXCLUDED.export_id, schema_version = EXCLUDED.schema_version, "
        "  source_rows = EXCLUDED.source_rows, rows = EXCLUDED.rows, bytes = EXCLUDED.bytes, "
        "  object_keys = EXCLUDED.object_keys, object_bytes = EXCLUDED.object_bytes, "
        "  object_sha256 = EXCLUDED.object_sha256, object_etags = EXCLUDED.object_etags, "
        "  manifest_key = EXCLUDED.manifest_key, storage_url = EXCLUDED.storage_url, "
        "  exported_at = EXCLUDED.exported_at, verified_at = NULL",
        (export.venue, export.account_id, export.table, export.day, export.export_id,
         SCHEMA_VERSION,
         export.source_rows, export.rows, export.bytes, [f.key for f in export.files],
         [f.bytes for f in export.files], [f.sha256 for f in export.files],
         [f.etag for f in export.files], export.manifest_key, export.storage_url,
         export.exported_at))


@dataclass(frozen=True)
class ManifestRow:
    """One ``export_manifest`` row (see the migrations for the columns' meaning);
    ``account_id`` None for a public table's partition."""

    venue: str
    table: str
    day: date
    export_id: str
    source_rows: int
    rows: int
    bytes: int
    object_keys: list[str]
    object_bytes: list[int]
    object_sha256: list[str]
    object_etags: list[str | None]
    manifest_key: str
    storage_url: str
    exported_at: datetime
    verified_at: datetime | None
    account_id: int | None = None

    @property
    def unit(self) -> Unit:
        """(venue, account_id): the partition unit."""
        return self.venue, self.account_id


def manifest_rows(conn: psycopg.Connection, table: str, day: date) -> list[ManifestRow]:
    """The ``export_manifest`` rows of (table, day), one per venue (per venue and account for
    a private table), by venue then account."""
    rows = conn.execute(
        "SELECT venue, table_name, day, export_id, source_rows, rows, bytes, object_keys, "
        "object_bytes, object_sha256, object_etags, manifest_key, storage_url, exported_at, "
        "verified_at, account_id FROM export_manifest WHERE table_name = %s AND day = %s "
        "ORDER BY venue, account_id", (table, day)).fetchall()
    return [ManifestRow(*r) for r in rows]

