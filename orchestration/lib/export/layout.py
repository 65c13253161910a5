"""What an export looks like: the format version, each table's layout (Arrow schema with exact
types, natural key and sort key, read from the database catalog), the Hive-style object keys
(``venue=/table=/date=``) and the UTC day a partition covers."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa

#: Version of the export format (layout, type mapping, metadata keys). Stored in every file's
#: key-value metadata as ``tickvault.schema_version`` and in every manifest.
SCHEMA_VERSION = 1

#: Tables worth exporting, in the order the partitions are listed. Tables that do not exist in
#: the database (yet) are skipped.
EXPORT_TABLES: tuple[str, ...] = ("quotes", "trades", "candles")

#: Name of the manifest object in each partition folder (see :mod:`.manifest`).
MANIFEST_NAME = "_manifest.json"

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


def partition_prefix(prefix: str, venue: str, table: str, day: date) -> str:
    """``<prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/`` (no leading '/' when
    ``prefix`` is empty)."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    return "/".join([*parts, f"venue={venue}", f"table={table}", f"date={day.isoformat()}"]) + "/"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC ``day`` as [start, end) timezone-aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def start_of_day_us(day: date) -> int:
    """The start of the UTC ``day`` in µs since the epoch."""
    return int(day_bounds(day)[0].timestamp()) * 1_000_000


def day_filter(layout: TableLayout, day: date) -> str:
    """SQL condition selecting the UTC ``day`` on the layout's time column (literal bounds:
    ADBC streams only queries without parameters)."""
    start, end = day_bounds(day)
    col = quote_ident(layout.time_column)
    return f"{col} >= '{start.isoformat()}' AND {col} < '{end.isoformat()}'"

