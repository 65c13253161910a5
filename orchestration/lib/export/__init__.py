"""Daily Parquet export of the tick tables to object storage, and its verification.

Object layout (Hive style, so polars, DuckDB and Spark prune on venue, table and date)::

    <prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/part-<n>.parquet
    <prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/_manifest.json
    <prefix>/venue=<venue>/account=<account_id>/table=<table>/date=<YYYY-MM-DD>/...  (private)

One *partition* is one (venue, table, UTC day); for a private table (one with an ``account_id``
column: a trading account's executions, orders, positions, wallet) one (venue, account, table,
UTC day), so that ``venue=<venue>/account=<id>/`` holds one account's files and nothing else.
The export of a (table, day) writes one partition per venue (or venue and account) found in that
day's rows. The tables are the core ones and those each venue declares
(``Venue.export_tables``). The files hold the table's columns except ``venue`` (it is the path's
``venue=`` level; Spark refuses a data column that is also a partition column); numeric columns
hold exact decimal text, json/jsonb columns JSON text (:mod:`.layout`).

How a partition is written (:func:`export_table_day`):

1. In one REPEATABLE READ snapshot: count the day's rows per (venue, instrument) (a GROUP BY
   over the day), then stream the day's rows, unordered, by binary ``COPY`` (ADBC), in
   ``ExportSettings.read_passes`` passes: consecutive instrument ranges holding about equal
   rows each, one ``SELECT`` per pass filtered on (venue, instrument_name). The database reads
   the day's rows once for the count and once per pass; it never sorts them. The passes run on
   a thread of their own (ADBC's decoding on one more), so the ranges of a finished pass are
   sorted and encoded (step 4) while the next pass is read.
2. The rows are routed to spill files (Arrow IPC, local disk, ``ExportSettings.spill_dir``), one
   per *range*: consecutive instruments (byte order) holding at most ``chunk_rows`` rows
   together, or a time slice of one busy instrument (quotes, trades; a candles instrument,
   sorted by interval before time, is never sliced). Each range is then read back, sorted in
   memory by the sort key (instrument_name, then the other natural-key columns: exchange_ts for
   quotes, exchange_ts and trade_id for trades) and written as one row group. Memory is bounded
   by ``chunk_rows``, not by the size of the day, and the partition's files are sorted as a
   whole. The files do not depend on ``read_passes``.
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

Modules: :mod:`.layout` (format version, table layouts, object keys, UTC days),
:mod:`.objectstore` (S3 and local stores), :mod:`.spill` (spill to disk and sort),
:mod:`.write` (:func:`export_table_day`), :mod:`.manifest` (``_manifest.json`` and
``export_manifest`` rows), :mod:`.verify` (:func:`verify_export`).
"""

from orchestration.lib.export.layout import (
    CORE_EXPORT_TABLES,
    EXPORT_TABLES,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    ExportError,
    TableLayout,
    day_filter,
    export_tables,
    partition_prefix,
    quote_ident,
    table_layout,
)
from orchestration.lib.export.manifest import (
    ExportedFile,
    ManifestRow,
    PartitionExport,
    manifest_rows,
    record_export,
    stored_manifest,
)
from orchestration.lib.export.objectstore import (
    LocalStore,
    ObjectStore,
    S3Store,
    StoredObject,
    make_store,
)
from orchestration.lib.export.verify import CHECKS, CheckOutcome, verify_export
from orchestration.lib.export.write import ExportSettings, export_table_day

__all__ = [
    "CHECKS",
    "CORE_EXPORT_TABLES",
    "EXPORT_TABLES",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "CheckOutcome",
    "ExportError",
    "ExportSettings",
    "ExportedFile",
    "LocalStore",
    "ManifestRow",
    "ObjectStore",
    "PartitionExport",
    "S3Store",
    "StoredObject",
    "TableLayout",
    "day_filter",
    "export_table_day",
    "export_tables",
    "make_store",
    "manifest_rows",
    "partition_prefix",
    "quote_ident",
    "record_export",
    "stored_manifest",
    "table_layout",
    "verify_export",
]
