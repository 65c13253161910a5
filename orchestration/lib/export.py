"""Daily Parquet export of the tick tables to object storage, and its verification.

Object layout (Hive style, so polars, DuckDB and Spark prune on venue, table and date)::

    <prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/part-<n>.parquet
    <prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/_manifest.json

One *partition* is one (venue, table, UTC day). The export of a (table, day) writes one partition
per venue found in that day's rows. The files hold the table's columns except ``venue`` (it is
the path's ``venue=`` level; Spark refuses a data column that is also a partition column).

How a partition is written (:func:`export_table_day`):

1. In one REPEATABLE READ snapshot: count the day's rows per (venue, instrument) (a GROUP BY
   over the day), then stream the day's rows, unordered, by binary ``COPY`` (ADBC). The
   database reads the day's rows twice, the count pass and the stream; it never sorts them.
2. The rows are routed to spill files (Arrow IPC, local disk, ``ExportSettings.spill_dir``), one
   per *range*: consecutive instruments (byte order) holding at most ``chunk_rows`` rows
   together, or a time slice of one busy instrument (quotes, trades; a candles instrument,
   sorted by interval before time, is never sliced). Each range is then read back, sorted in
   memory by the sort key (instrument_name, then the other natural-key columns: exchange_ts for
   quotes, exchange_ts and trade_id for trades) and written as one row group. Memory is bounded
   by ``chunk_rows``, not by the size of the day, and the partition's files are sorted as a
   whole.
3. Before anything is uploaded, a partition whose export in force holds more rows than the
   snapshot is refused (:class:`ExportError`): the database only loses rows of a day through
   retention, and replacing the archive with what is left would lose the dropped rows.
4. Parquet (zstd, dictionary encoding with pyarrow's fallback to plain where the dictionary does
   not pay, exact types from the catalog, the schema version in the key-value metadata) is
   streamed straight into the store: an S3 multipart upload with a Content-MD5 on every part (the
   server verifies each part), or a local temp file renamed at the end.
5. Once every venue's files are uploaded, each ``_manifest.json`` is written, then the
   ``export_manifest`` rows (``verified_at`` NULL), then the objects of the previous exports are
   deleted. Part numbers are never reused within a partition, so no object named by a manifest
   is ever overwritten: a reader that follows the manifest always sees one complete export, and
   a failed run deletes what it uploaded and leaves every previous manifest and its objects as
   they were. (A glob over the folder, which ignores the manifest, sees each new file as soon as
   it is committed: both generations from the first committed file until the old objects are
   deleted.)

:func:`verify_export` checks a (table, day) against the database and records the outcome in
``export_manifest.verified_at`` (set when every check passes, cleared otherwise); retention drops
only verified days.
"""

import base64
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

#: Version of the export format (layout, type mapping, metadata keys). Stored in every file's
#: key-value metadata as ``tickvault.schema_version`` and in every manifest.
SCHEMA_VERSION = 1

#: Tables worth exporting, in the order the partitions are listed. Tables that do not exist in
#: the database (yet) are skipped.
EXPORT_TABLES: tuple[str, ...] = ("quotes", "trades", "candles")

MANIFEST_NAME = "_manifest.json"
DAY_US = 86_400_000_000

_PART_RE = re.compile(r"part-(\d+)\.parquet$")

#: PostgreSQL type (``format_type``) -> Arrow type of the exported column. Exact: timestamptz
#: keeps PostgreSQL's µs precision, floats stay IEEE doubles, integers keep their width.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "timestamp without time zone": pa.timestamp("us"),
    "date": pa.date32(),
    "double precision": pa.float64(),
    "real": pa.float32(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "smallint": pa.int16(),
    "boolean": pa.bool_(),
    "text": pa.string(),
}


class ExportError(RuntimeError):
    """The export cannot run: the day is not over, the table has an unsupported shape, ..."""


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
    """

    chunk_rows: int = 500_000
    rows_per_file: int = 20_000_000
    zstd_level: int = 3
    part_bytes: int = 64 * 2**20
    spill_dir: str | None = None


# --------------------------------------------------------------------------------------------
# Tables: declared schema and sort order, from the catalog
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableLayout:
    """How a table is exported, derived from the database catalog.

    Attributes:
        table: table name.
        schema: Arrow schema of the table's rows (column order of the table; NOT NULL columns
            are non-nullable), without metadata. The files hold it without ``venue``.
        time_column: the timestamptz column of the natural key; partitions are UTC days of it.
        key: the natural key (unique constraint), used to look sampled rows up again.
        sort_key: order of the rows within a venue's partition: instrument_name (when the table
            has it), then the other key columns in key order (quotes: instrument_name,
            exchange_ts; trades: + trade_id; candles: instrument_name, interval, bucket_start).
    """

    table: str
    schema: pa.Schema
    time_column: str
    key: tuple[str, ...]
    sort_key: tuple[str, ...]

    @property
    def group_column(self) -> str | None:
        """``instrument_name`` when the table has it: the unit rows are ranged by."""
        return "instrument_name" if "instrument_name" in self.schema.names else None

    @property
    def time_sliceable(self) -> bool:
        """Whether one instrument's rows may be cut into time slices that are sorted apart and
        concatenated: only when the time column comes right after instrument_name in the sort
        key (quotes, trades). Candles sort by interval first, so an instrument's candles of a
        day stay in one range (at most 1,849 rows)."""
        rest = self.sort_key[1:] if self.group_column else self.sort_key
        return rest[:1] == (self.time_column,)

    @property
    def file_schema(self) -> pa.Schema:
        """The declared schema of the files: the table's columns without ``venue``, which is
        the ``venue=`` level of the path (Spark rejects a column that is also a partition)."""
        return self.schema.remove(self.schema.get_field_index("venue"))

    def schema_for(self, venue: str, day: date) -> pa.Schema:
        """The file schema with the key-value metadata written into each file."""
        return self.file_schema.with_metadata({
            "tickvault.schema_version": str(SCHEMA_VERSION),
            "tickvault.venue": venue,
            "tickvault.table": self.table,
            "tickvault.date": day.isoformat(),
            "tickvault.sort_key": ",".join(self.sort_key),
        })


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _arrow_type(pg_type: str, table: str, column: str) -> pa.DataType:
    if pg_type.startswith("character varying"):
        return pa.string()
    try:
        return _ARROW_TYPES[pg_type]
    except KeyError:
        raise ExportError(f"{table}.{column}: column type {pg_type!r} has no exact Parquet "
                          "mapping in the export") from None


def table_layout(conn: psycopg.Connection, table: str) -> TableLayout | None:
    """The export layout of ``table``, or None when the table does not exist.

    Raises:
        ExportError: no ``venue`` column, no unique key with a timestamptz column, or a column
            type without an exact Arrow mapping.
    """
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return None
    columns = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,)).fetchall()
    schema = pa.schema([pa.field(name, _arrow_type(typ, table, name), nullable=not notnull)
                        for name, typ, notnull in columns])
    row = conn.execute(
        "SELECT array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord) "
        "  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord) "
        "FROM pg_constraint c WHERE c.conrelid = to_regclass(%s) AND c.contype IN ('p', 'u') "
        "ORDER BY c.contype = 'p' DESC, c.conname LIMIT 1", (table,)).fetchone()
    key = tuple(row[0]) if row else ()
    if "venue" not in schema.names:
        raise ExportError(f"{table} has no venue column: the export layout needs one")
    time_column = next((c for c in key if schema.field(c).type == pa.timestamp("us", tz="UTC")),
                       None)
    if time_column is None:
        raise ExportError(f"{table} has no unique key with a timestamptz column")
    group = ["instrument_name"] if "instrument_name" in schema.names else []
    sort_key = tuple(group + [c for c in key if c not in ("venue", *group)])
    return TableLayout(table, schema, time_column, key, sort_key)


# --------------------------------------------------------------------------------------------
# Object stores: S3-compatible (B2, AWS S3, MinIO) and a local directory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """An object as written or found: ``key``, ``size`` in bytes, ``sha256`` (hex, of the whole
    object; None when not computed) and ``etag`` (the server's ETag; None for a local store)."""

    key: str
    size: int
    sha256: str | None = None
    etag: str | None = None


class _Sink(io.RawIOBase):
    """Write-only stream for one new object; :meth:`commit` makes it visible, :meth:`abort`
    discards it. Hashes the bytes (sha256) as they pass."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self._sha = hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self._pos += len(view)
        self._write(view)
        return len(view)

    def _write(self, view: memoryview) -> None:
        raise NotImplementedError

    def commit(self) -> StoredObject:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


def _md5_b64(data) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class _S3Sink(_Sink):
    """Buffers ``part_bytes``, then continues as a multipart upload; every PUT carries a
    Content-MD5 the server checks. An object smaller than one part is a single PUT."""

    def __init__(self, client, bucket: str, key: str, part_bytes: int) -> None:
        super().__init__(key)
        self._client, self._bucket, self._part_bytes = client, bucket, part_bytes
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def _write(self, view: memoryview) -> None:
        self._buf += view
        if len(self._buf) >= self._part_bytes:
            self._upload_part()

    def _upload_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self.key,
                ContentType="application/vnd.apache.parquet")["UploadId"]
        number = len(self._parts) + 1
        body = bytes(self._buf)
        self._buf.clear()
        etag = self._client.upload_part(Bucket=self._bucket, Key=self.key, PartNumber=number,
                                        UploadId=self._upload_id, Body=body,
                                        ContentMD5=_md5_b64(body))["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def commit(self) -> StoredObject:
        if self._upload_id is None:
            body = bytes(self._buf)
            etag = self._client.put_object(Bucket=self._bucket, Key=self.key, Body=body,
                                           ContentMD5=_md5_b64(body),
                                           ContentType="application/vnd.apache.parquet")["ETag"]
        else:
            if self._buf:
                self._upload_part()
            etag = self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self.key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts})["ETag"]
        return StoredObject(self.key, self._pos, self._sha.hexdigest(), etag)

    def abort(self) -> None:
        self._buf.clear()
        if self._upload_id is not None:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self.key,
                                                UploadId=self._upload_id)


class _LocalSink(_Sink):
    """Writes ``<path>.<random>.tmp`` and renames it over ``path`` on commit (after fsync)."""

    def __init__(self, path: Path, key: str) -> None:
        super().__init__(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._fh = open(self._tmp, "wb")

    def _write(self, view: memoryview) -> None:
        self._fh.write(view)

    def commit(self) -> StoredObject:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._path)
        return StoredObject(self.key, self._pos, self._sha.hexdigest())

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


class _S3RangeFile(io.RawIOBase):
    """Read-only, seekable view of an S3 object that fetches byte ranges on demand (what
    pyarrow needs to read a Parquet footer or single row groups without the whole object)."""

    def __init__(self, client, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        body = self._client.get_object(Bucket=self._bucket, Key=self._key,
                                       Range=f"bytes={self._pos}-{self._pos + n - 1}")["Body"]
        data = body.read()
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


class ObjectStore:
    """Where partitions are written. ``url`` names it in manifests (``s3://bucket`` or
    ``file:///dir``); keys are '/'-separated paths relative to it."""

    url: str

    def writer(self, key: str, part_bytes: int) -> _Sink:
        """A sink for a new object at ``key`` (invisible until ``commit()``)."""
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Write a small object in one atomic step."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        raise NotImplementedError

    def head(self, key: str) -> StoredObject | None:
        """Size and ETag of an object (sha256 None), or None when it does not exist."""
        raise NotImplementedError

    def open(self, key: str, size: int) -> BinaryIO:
        """A seekable binary reader of an object of ``size`` bytes."""
        raise NotImplementedError

    def sha256(self, key: str) -> str:
        """sha256 (hex) of the object's bytes, read in full."""
        raise NotImplementedError

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder path ending in '/')."""
        raise NotImplementedError

    def delete(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""
        raise NotImplementedError


class S3Store(ObjectStore):
    """An S3-compatible bucket through a boto3 client (Backblaze B2, AWS S3, MinIO)."""

    def __init__(self, client, bucket: str) -> None:
        self.client, self.bucket = client, bucket
        self.url = f"s3://{bucket}"

    def writer(self, key: str, part_bytes: int) -> _Sink:
        return _S3Sink(self.client, self.bucket, key, part_bytes)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                      ContentMD5=_md5_b64(data),
                                      ContentType="application/json")["ETag"]
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), etag)

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.ClientError as exc:
            if self._missing(exc):
                return None
            raise

    def head(self, key: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if self._missing(exc):
                return None
            raise
        return StoredObject(key, head["ContentLength"], None, head["ETag"])

    def open(self, key: str, size: int) -> BinaryIO:
        return io.BufferedReader(_S3RangeFile(self.client, self.bucket, key, size),
                                 buffer_size=1 << 20)

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(chunk_size=1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def list_keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


class LocalStore(ObjectStore):
    """A local directory with the same layout (the default when no bucket is configured)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def writer(self, key: str, part_bytes: int) -> _Sink:
        return _LocalSink(self._path(key), key)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        sink = _LocalSink(self._path(key), key)
        sink.write(data)
        return sink.commit()

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        return StoredObject(key, path.stat().st_size) if path.is_file() else None

    def open(self, key: str, size: int) -> BinaryIO:
        return open(self._path(key), "rb")

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*")
                      if p.is_file())

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


def partition_prefix(prefix: str, venue: str, table: str, day: date) -> str:
    """``<prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/`` (no leading '/' when
    ``prefix`` is empty)."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    return "/".join([*parts, f"venue={venue}", f"table={table}", f"date={day.isoformat()}"]) + "/"


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


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
    """The outcome of exporting one (venue, table, day): what ``_manifest.json`` and the
    ``export_manifest`` row record. ``source_rows`` is the database's count in the export's
    snapshot; ``rows`` what the files hold (always equal: the export fails otherwise)."""

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

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def manifest(self) -> dict[str, Any]:
        """The JSON document stored as ``_manifest.json``."""
        return {
            "format": "tickvault-parquet-export",
            "schema_version": SCHEMA_VERSION,
            "export_id": self.export_id,
            "venue": self.venue,
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


@dataclass
class _Range:
    """Rows of one venue sorted together in memory: consecutive instruments (byte order) or,
    when ``sliced``, one time slice of a single busy instrument. ``rows`` is the expected count
    (from the snapshot's counts; approximate for slices), ``path`` its spill file."""

    venue: str
    names: list[str | None] = field(default_factory=list)
    rows: int = 0
    sliced: bool = False
    path: Path | None = None


def _name_order(name: str | None) -> tuple[bool, str]:
    """Sort key of instrument names: byte order of UTF-8 (= code point order), NULL last."""
    return name is None, name or ""


def _plan(counts: list[tuple[str, str | None, int]], chunk_rows: int, sliceable: bool):
    """Ranges over the day's (venue, instrument, rows) counts, and the routing arrays. An
    instrument with more than ``chunk_rows`` rows is cut into time slices when ``sliceable``
    (:attr:`TableLayout.time_sliceable`), else it gets a range of its own.

    Returns (ranges, venues, names, base, slices): a row whose venue and instrument have the
    ordinals v, g in ``venues`` / ``names`` goes to range ``base[c] + min(slices[c] - 1,
    offset_us * slices[c] // DAY_US)`` with ``c = v * len(names) + g`` and ``offset_us`` its time
    since the start of the day.
    """
    venues = sorted({v for v, _, _ in counts})
    names = sorted({g for _, g, _ in counts}, key=_name_order)
    vi = {v: i for i, v in enumerate(venues)}
    gi = {g: i for i, g in enumerate(names)}
    base = [0] * (len(venues) * len(names))
    slices = [1] * len(base)
    ranges: list[_Range] = []
    for venue, group, n in sorted(counts, key=lambda c: (c[0], *_name_order(c[1]))):
        cell = vi[venue] * len(names) + gi[group]
        if n > chunk_rows and sliceable:
            k = -(-n // chunk_rows)
            base[cell], slices[cell] = len(ranges), k
            ranges.extend(_Range(venue, [group], n // k, sliced=True) for _ in range(k))
            continue
        last = ranges[-1] if ranges else None
        if last is None or last.sliced or last.venue != venue or last.rows + n > chunk_rows:
            ranges.append(_Range(venue))
        ranges[-1].names.append(group)
        ranges[-1].rows += n
        base[cell] = len(ranges) - 1
    return ranges, venues, names, base, slices


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _day_start_us(day: date) -> int:
    return int(_day_bounds(day)[0].timestamp()) * 1_000_000


def day_filter(layout: TableLayout, day: date) -> str:
    """SQL condition selecting the UTC ``day`` on the layout's time column (literal bounds:
    ADBC streams only queries without parameters)."""
    start, end = _day_bounds(day)
    col = quote_ident(layout.time_column)
    return f"{col} >= '{start.isoformat()}' AND {col} < '{end.isoformat()}'"


def _spill(dsn: str, layout: TableLayout, day: date, settings: ExportSettings,
           spill_dir: Path) -> tuple[list[_Range], dict[str, int]]:
    """Count and stream the day in one snapshot, routing rows into per-range spill files.
    Returns the ranges (with their spill paths) and the snapshot's row count per venue."""
    table, where = quote_ident(layout.table), day_filter(layout, day)
    group = quote_ident(layout.group_column) if layout.group_column else "NULL::text"
    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(f"SELECT venue, {group} AS g, count(*) AS n FROM {table} "
                    f"WHERE {where} GROUP BY 1, 2")
        counts = [(r["venue"], r["g"], r["n"]) for r in cur.fetch_arrow_table().to_pylist()]
        ranges, venues, names, base, slices = _plan(counts, settings.chunk_rows,
                                                     layout.time_sliceable)
        source_rows: dict[str, int] = {}
        for venue, _, n in counts:
            source_rows[venue] = source_rows.get(venue, 0) + n
        if not ranges:
            return [], source_rows
        venue_set, name_set = pa.array(venues, pa.string()), pa.array(names, pa.string())
        base_arr, slices_arr = pa.array(base, pa.int64()), pa.array(slices, pa.int64())
        day_start_us = _day_start_us(day)
        columns = ", ".join(quote_ident(n) for n in layout.schema.names)
        cur.execute(f"SELECT {columns} FROM {table} WHERE {where}")
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        try:
            for batch in cur.fetch_record_batch():
                batch = batch.cast(layout.schema)
                v = pc.index_in(batch.column("venue"), value_set=venue_set)
                g = (pc.index_in(batch.column(layout.group_column), value_set=name_set)
                     if layout.group_column else pa.repeat(0, batch.num_rows).cast(pa.int32()))
                cell = pc.add(pc.multiply(v.cast(pa.int64()), len(names)), g.cast(pa.int64()))
                n_slices = pc.take(slices_arr, cell)
                offset = pc.subtract(batch.column(layout.time_column).cast(pa.int64()),
                                     day_start_us)
                piece = pc.min_element_wise(pc.divide(pc.multiply(offset, n_slices), DAY_US),
                                            pc.subtract(n_slices, 1))
                rid = pc.add(pc.take(base_arr, cell), piece)
                order = pc.sort_indices(rid)
                routed = batch.take(order)
                counts_by_range = sorted(
                    (c["values"], c["counts"]) for c in pc.value_counts(rid).to_pylist())
                pos = 0
                for r, n in counts_by_range:
                    if r not in writers:
                        ranges[r].path = spill_dir / f"range-{r}.arrow"
                        writers[r] = ipc.new_stream(ranges[r].path, layout.schema)
                    writers[r].write_batch(routed.slice(pos, n))
                    pos += n
        finally:
            for w in writers.values():
                w.close()
        conn.commit()
    return ranges, source_rows


def _sorted_range(layout: TableLayout, rng: _Range, day_start_us: int) -> pa.Table:
    """Read a range's spill file and sort it by the layout's sort key. Instrument names become
    ordinal codes (byte order); when the time column follows, code and time since the start of
    the day fold into one int64 key (code * 2^37 + µs; a day is < 2^37 µs), the fastest sort."""
    with ipc.open_stream(rng.path) as reader:
        table = reader.read_all()
    rng.path.unlink()
    columns = {c: table.column(c) for c in layout.sort_key}
    keys = list(layout.sort_key)
    if layout.group_column:
        names = pa.array(sorted(rng.names, key=_name_order), pa.string())
        code = pc.index_in(table.column(layout.group_column), value_set=names).cast(pa.int64())
        if len(keys) > 1 and keys[1] == layout.time_column:
            offset = pc.subtract(table.column(layout.time_column).cast(pa.int64()), day_start_us)
            columns["_key"] = pc.add(pc.shift_left(code, 37), offset)
            keys[:2] = ["_key"]
        else:
            columns["_key"] = code
            keys[0] = "_key"
    order = pc.sort_indices(pa.table({c: columns[c] for c in keys}),
                            sort_keys=[(c, "ascending") for c in keys])
    return table.take(order)


def _files(ranges: list[_Range], rows_per_file: int) -> list[list[_Range]]:
    """Consecutive ranges grouped into files of at most ``rows_per_file`` rows (a range is
    never split)."""
    files: list[list[_Range]] = []
    total = 0
    for rng in ranges:
        if rng.path is None:
            continue
        if not files or total + rng.rows > rows_per_file:
            files.append([])
            total = 0
        files[-1].append(rng)
        total += rng.rows
    return files


def _next_part_number(keys: list[str]) -> int:
    numbers = [int(m.group(1)) for k in keys if (m := _PART_RE.search(k))]
    return max(numbers) + 1 if numbers else 0


def _write_file(store: ObjectStore, key: str, schema: pa.Schema, layout: TableLayout, day: date,
                ranges: list[_Range], settings: ExportSettings) -> ExportedFile:
    """Write ``ranges`` (in order, one row group each) as one Parquet object. The next range is
    read and sorted on a second thread while the current one is encoded (pyarrow releases the
    GIL in both), so at most two sorted ranges are in memory."""
    sink = store.writer(key, settings.part_bytes)
    rows = 0
    day_start_us = _day_start_us(day)

    def prepare(rng: _Range) -> pa.Table:
        return _sorted_range(layout, rng, day_start_us).drop_columns(["venue"])

    try:
        writer = pq.ParquetWriter(
            sink, schema, compression="zstd", compression_level=settings.zstd_level,
            use_dictionary=True, write_statistics=True,
            sorting_columns=pq.SortingColumn.from_ordering(
                schema, [(c, "ascending") for c in layout.sort_key]))
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(prepare, ranges[0])
            for following in [*ranges[1:], None]:
                table = pending.result()
                if following is not None:
                    pending = pool.submit(prepare, following)
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
                rows += table.num_rows
                del table
        writer.close()
        stored = sink.commit()
    except BaseException:
        sink.abort()
        raise
    return ExportedFile(key, rows, stored.size, stored.sha256, stored.etag)


def export_table_day(dsn: str, store: ObjectStore, prefix: str, table: str, day: date,
                     settings: ExportSettings = ExportSettings(),
                     now: datetime | None = None) -> list[PartitionExport] | None:
    """Export one UTC day of ``table``: one partition per venue with rows that day.

    Replaces any earlier export of those partitions: first every venue's new objects are
    uploaded, then the venues' manifests are written, then their ``export_manifest`` rows
    (``verified_at`` NULL), then their previous objects are deleted. Returns None when the table
    does not exist, [] when it has no rows that day.

    Raises:
        ExportError: the day has not ended (``now``, default the current time), the table's
            shape is not exportable, or a venue's export in force (its ``_manifest.json`` or
            ``export_manifest`` row) holds more rows than the database holds now: retention
            dropped the day since, and replacing the archive would lose those rows (checked
            before anything is uploaded; the message names the partition and both counts). On
            any error every partition keeps its previous manifest and objects; the objects this
            run uploaded are deleted (best effort: what a failed delete or a killed process
            leaves is deleted by the next export of the partition).
    """
    now = now or datetime.now(UTC)
    if _day_bounds(day)[1] > now:
        raise ExportError(f"{day} has not ended yet (UTC): export it after midnight")
    with psycopg.connect(dsn) as conn:
        layout = table_layout(conn, table)
    if layout is None:
        return None
    spill_dir = Path(tempfile.mkdtemp(prefix="tickvault-export-", dir=settings.spill_dir))
    try:
        ranges, source_rows = _spill(dsn, layout, day, settings, spill_dir)
        folders = {v: partition_prefix(prefix, v, layout.table, day) for v in sorted(source_rows)}
        _refuse_shrinking(dsn, store, layout, day, folders, source_rows)
        previous = {v: store.list_keys(folder) for v, folder in folders.items()}
        exports = _upload(store, layout, day, folders, previous, ranges, source_rows, settings)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    with psycopg.connect(dsn) as conn:
        for export in exports:
            record_export(conn, export)
    for export in exports:
        keep = {f.key for f in export.files} | {export.manifest_key}
        store.delete([k for k in previous[export.venue] if k not in keep])
    return exports


def stored_manifest(store: ObjectStore, folder: str) -> dict[str, Any] | None:
    """The ``_manifest.json`` document of the partition ``folder`` (as from
    :func:`partition_prefix`), or None when it is missing or not valid JSON."""
    document = store.get_bytes(folder + MANIFEST_NAME)
    try:
        return json.loads(document) if document is not None else None
    except ValueError:
        return None


def _refuse_shrinking(dsn: str, store: ObjectStore, layout: TableLayout, day: date,
                      folders: dict[str, str], source_rows: dict[str, int]) -> None:
    """Raise ExportError when the export in force of a partition (its ``_manifest.json`` or its
    ``export_manifest`` row, whichever holds more) has more rows than the database holds now.

    Rows only ever get added to a day (inserts are insert-if-absent), except by retention; so a
    smaller count means retention dropped the day (and, say, a backfill added a few rows back),
    and replacing the archive with what is left would delete the dropped rows for good.
    """
    with psycopg.connect(dsn) as conn:
        recorded = {m.venue: m.rows for m in manifest_rows(conn, layout.table, day)}
    for venue, folder in folders.items():
        in_store = (stored_manifest(store, folder) or {}).get("rows", 0)
        archived = max(in_store, recorded.get(venue, 0))
        if archived > source_rows[venue]:
            raise ExportError(
                f"{folder}: refusing to replace the export in force ({archived} rows: "
                f"{folder}{MANIFEST_NAME} {in_store}, export_manifest {recorded.get(venue, 0)}) "
                f"with the {source_rows[venue]} rows the database holds now; rows of the day "
                f"were dropped since (retention), re-exporting would lose them. To replace it "
                f"anyway, delete the partition's {MANIFEST_NAME} and export_manifest row first.")


def _upload(store: ObjectStore, layout: TableLayout, day: date, folders: dict[str, str],
            previous: dict[str, list[str]], ranges: list[_Range], source_rows: dict[str, int],
            settings: ExportSettings) -> list[PartitionExport]:
    """Upload every venue's files, then write every venue's manifest; on an error delete this
    run's objects of each venue whose manifest in force is not this run's, and re-raise."""
    export_ids = {venue: uuid.uuid4().hex for venue in folders}
    written: dict[str, list[ExportedFile]] = {venue: [] for venue in folders}
    exports: list[PartitionExport] = []
    try:
        for venue, folder in folders.items():
            number = _next_part_number(previous[venue])
            schema = layout.schema_for(venue, day)
            for file_ranges in _files([r for r in ranges if r.venue == venue],
                                      settings.rows_per_file):
                key = f"{folder}part-{number}.parquet"
                written[venue].append(_write_file(store, key, schema, layout, day, file_ranges,
                                                  settings))
                number += 1
            export = PartitionExport(
                venue, layout.table, day, export_ids[venue], source_rows[venue],
                tuple(written[venue]), folder + MANIFEST_NAME, store.url, datetime.now(UTC),
                layout.file_schema, layout.sort_key)
            if export.rows != source_rows[venue]:
                raise ExportError(f"{venue}/{layout.table}/{day}: wrote {export.rows} rows, the "
                                  f"database snapshot had {source_rows[venue]}")
            exports.append(export)
        for export in exports:
            store.put_bytes(export.manifest_key,
                            json.dumps(export.manifest(), indent=1).encode())
    except BaseException as exc:
        for venue, folder in folders.items():
            try:
                # Unless the manifest got written after all (a lost response), this run's
                # objects are garbage: the previous manifest stays in force and names none.
                if (stored_manifest(store, folder) or {}).get("export_id") != export_ids[venue]:
                    store.delete([f.key for f in written[venue]])
            except Exception as cleanup:
                exc.add_note(f"{folder}: objects of the failed export left in place ({cleanup!r});"
                             " the next export of the partition deletes them")
        raise
    return exports


# --------------------------------------------------------------------------------------------
# export_manifest (schema/0007.export_manifest.sql)
# --------------------------------------------------------------------------------------------


def record_export(conn: psycopg.Connection, export: PartitionExport) -> None:
    """Insert or replace the ``export_manifest`` row of the partition (``verified_at`` NULL)."""
    conn.execute(
        "INSERT INTO export_manifest (venue, table_name, day, export_id, schema_version, "
        "  source_rows, rows, bytes, object_keys, object_bytes, object_sha256, object_etags, "
        "  manifest_key, storage_url, exported_at, verified_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL) "
        "ON CONFLICT (table_name, day, venue) DO UPDATE SET "
        "  export_id = EXCLUDED.export_id, schema_version = EXCLUDED.schema_version, "
        "  source_rows = EXCLUDED.source_rows, rows = EXCLUDED.rows, bytes = EXCLUDED.bytes, "
        "  object_keys = EXCLUDED.object_keys, object_bytes = EXCLUDED.object_bytes, "
        "  object_sha256 = EXCLUDED.object_sha256, object_etags = EXCLUDED.object_etags, "
        "  manifest_key = EXCLUDED.manifest_key, storage_url = EXCLUDED.storage_url, "
        "  exported_at = EXCLUDED.exported_at, verified_at = NULL",
        (export.venue, export.table, export.day, export.export_id, SCHEMA_VERSION,
         export.source_rows, export.rows, export.bytes, [f.key for f in export.files],
         [f.bytes for f in export.files], [f.sha256 for f in export.files],
         [f.etag for f in export.files], export.manifest_key, export.storage_url,
         export.exported_at))


@dataclass(frozen=True)
class ManifestRow:
    """One ``export_manifest`` row (see the migration for the columns' meaning)."""

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


def manifest_rows(conn: psycopg.Connection, table: str, day: date) -> list[ManifestRow]:
    """The ``export_manifest`` rows of (table, day), one per venue, by venue."""
    rows = conn.execute(
        "SELECT venue, table_name, day, export_id, source_rows, rows, bytes, object_keys, "
        "object_bytes, object_sha256, object_etags, manifest_key, storage_url, exported_at, "
        "verified_at FROM export_manifest WHERE table_name = %s AND day = %s ORDER BY venue",
        (table, day)).fetchall()
    return [ManifestRow(*r) for r in rows]


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

#: The checks :func:`verify_export` runs, with what each asserts.
CHECKS: dict[str, str] = {
    "row_count": "Rows in the Parquet files (footers, read from the store) equal the rows in "
                 "the database for that day, per venue.",
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


def _db_counts(conn: psycopg.Connection, layout: TableLayout, day: date) -> dict[str, int]:
    return dict(conn.execute(
        f"SELECT venue, count(*) FROM {quote_ident(layout.table)} WHERE {day_filter(layout, day)} "
        "GROUP BY venue").fetchall())


def _sample_db_rows(conn: psycopg.Connection, layout: TableLayout, day: date,
                    keys: list[tuple]) -> dict[tuple, dict]:
    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (layout.table,)).fetchall())
    key_cols = ", ".join(quote_ident(c) for c in layout.key)
    arrays = ", ".join(f"%s::{types[c]}[]" for c in layout.key)
    cur = conn.execute(
        f"SELECT * FROM {quote_ident(layout.table)} WHERE {day_filter(layout, day)} "
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

    Sets ``export_manifest.verified_at`` to now for every venue whose checks all pass and clears
    it for the others. ``deep`` downloads every object to compare its sha256 (otherwise size and
    ETag only). ``sample_rows`` rows per venue are compared column by column.

    Returns:
        check name -> outcome, over all venues of the day.

    Raises:
        ExportError: the table does not exist.
    """
    outcomes = {name: CheckOutcome() for name in CHECKS}
    with psycopg.connect(dsn) as conn:
        layout = table_layout(conn, table)
        if layout is None:
            raise ExportError(f"table {table} does not exist")
        db_counts = _db_counts(conn, layout, day)
        manifests = {m.venue: m for m in manifest_rows(conn, table, day)}
        venue_ok: dict[str, bool] = {}
        for venue in sorted(set(db_counts) | set(manifests)):
            failed_before = {n: len(o.failures) for n, o in outcomes.items()}
            _verify_venue(conn, store, layout, day, venue, db_counts.get(venue, 0),
                          manifests.get(venue), outcomes, deep, sample_rows)
            venue_ok[venue] = all(len(o.failures) == failed_before[n]
                                  for n, o in outcomes.items())
        for venue, m in manifests.items():
            conn.execute(
                "UPDATE export_manifest SET verified_at = CASE WHEN %s THEN now() END "
                "WHERE table_name = %s AND day = %s AND venue = %s AND export_id = %s",
                (venue_ok[venue], table, day, venue, m.export_id))
    outcomes["row_count"].metadata["database_rows"] = sum(db_counts.values())
    return outcomes


def _verify_venue(conn: psycopg.Connection, store: ObjectStore, layout: TableLayout, day: date,
                  venue: str, db_rows: int, manifest: ManifestRow | None,
                  outcomes: dict[str, CheckOutcome], deep: bool, sample_rows: int) -> None:
    where = f"{venue}/{layout.table}/{day}"
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
        _compare_sample(conn, store, layout, day, venue, files, manifest.export_id, sample_rows,
                        sample)


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


def make_store(bucket: str | None, client_factory: Callable[[], Any],
               local_dir: str) -> ObjectStore:
    """The configured store: an :class:`S3Store` on ``bucket`` (boto3 client from
    ``client_factory()``), or a :class:`LocalStore` in ``local_dir`` when no bucket is set."""
    return S3Store(client_factory(), bucket) if bucket else LocalStore(local_dir)
