"""What an export looks like: the format version, the tables exported, each table's layout
(Arrow schema with exact types, natural key and sort key, read from the database catalog), the
Hive-style object keys (``venue=[/account=]/table=/date=``) and the UTC day a partition covers."""

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa

from collector_daemon.venues import select_venues

#: Version of the export format (layout, type mapping, metadata keys). Stored in every file's
#: key-value metadata as ``tickvault.schema_version`` and in every manifest.
SCHEMA_VERSION = 1

#: The shared tables every deployment exports (every venue's rows of them).
CORE_EXPORT_TABLES: tuple[str, ...] = ("quotes", "trades", "candles")


def export_tables(venue_names: str | None) -> tuple[str, ...]:
    """The tables the nightly export covers: :data:`CORE_EXPORT_TABLES`, then the venue-owned
    tables each selected venue declares (:attr:`collector_daemon.venues.Venue.export_tables`),
    venues by name. ``venue_names``: comma-separated registered names (``TICKVAULT_VENUES``),
    empty or None = every registered venue.

    Raises:
        collector_daemon.venues.UnknownVenue: a name is not registered.
    """
    own = [t for venue in select_venues(venue_names).values() for t in venue.export_tables]
    return tuple(dict.fromkeys([*CORE_EXPORT_TABLES, *own]))


#: Tables worth exporting, in the order the partitions are listed: the core tables and those of
#: the venues this deployment records (``TICKVAULT_VENUES``, as ``orchestration.partitions``).
#: Tables that do not exist in the database (yet) are skipped.
EXPORT_TABLES: tuple[str, ...] = export_tables(os.environ.get("TICKVAULT_VENUES"))

#: Column of the private (per trading account) tables: their partitions are per account, under
#: ``venue=<venue>/account=<account_id>/``, so one account's files can be shared alone.
ACCOUNT_COLUMN = "account_id"

#: Partition unit of a table: (venue, account_id); account_id is None for public tables.
Unit = tuple[str, int | None]

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
    "text[]": pa.list_(pa.string()),
    "character varying[]": pa.list_(pa.string()),
}

#: Columns written as their PostgreSQL text (cast with ``::text`` in the export's SELECT, so
#: the file holds exactly what ``psql`` shows): ``numeric`` as exact decimal text (scale kept:
#: ``65114.20`` stays ``65114.20``; NaN as ``NaN``), json/jsonb as JSON text. Why not decimal128:
#: an unconstrained numeric has a scale per value and up to 131,072 digits, decimal128 one scale
#: per column and 38 digits (docs/export.md, "Types").
_TEXT_TYPES: dict[str, str] = {"numeric": "decimal", "json": "json", "jsonb": "json"}


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
        sort_key: order of the rows within a partition: instrument_name (when the table has
            it), then the other key columns in key order but venue and account_id (quotes:
            instrument_name, exchange_ts; trades: + trade_id; candles: instrument_name,
            interval, bucket_start; bybit_executions: instrument_name, exchange_ts, exec_id).
        decimal_columns: ``numeric`` columns, stored as exact decimal text (Arrow string).
        json_columns: json/jsonb columns, stored as JSON text (Arrow string).
    """

    table: str
    schema: pa.Schema
    time_column: str
    key: tuple[str, ...]
    sort_key: tuple[str, ...]
    decimal_columns: tuple[str, ...] = ()
    json_columns: tuple[str, ...] = ()

    @property
    def account_column(self) -> str | None:
        """``account_id`` for a private (per account) table, whose partitions are per
        (venue, account); None for a public one."""
        return ACCOUNT_COLUMN if ACCOUNT_COLUMN in self.schema.names else None

    def select_list(self) -> str:
        """The SELECT list reading the table's columns as the files hold them (numeric and
        json columns as their PostgreSQL text, named as the column)."""
        text = {*self.decimal_columns, *self.json_columns}
        return ", ".join(f"{quote_ident(c)}::text AS {quote_ident(c)}" if c in text
                         else quote_ident(c) for c in self.schema.names)

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
        the ``venue=`` level of the path (Spark rejects a column that is also a partition).
        ``account_id`` stays (its path level is named ``account``): a tenant's files say whose
        they are."""
        return self.schema.remove(self.schema.get_field_index("venue"))

    def schema_for(self, venue: str, day: date, account_id: int | None = None) -> pa.Schema:
        """The file schema with the key-value metadata written into each file (the account
        only for a private table; the decimal and JSON text columns, comma-separated)."""
        return self.file_schema.with_metadata({
            "tickvault.schema_version": str(SCHEMA_VERSION),
            "tickvault.venue": venue,
            **({"tickvault.account_id": str(account_id)} if account_id is not None else {}),
            "tickvault.table": self.table,
            "tickvault.date": day.isoformat(),
            "tickvault.sort_key": ",".join(self.sort_key),
            "tickvault.decimal_columns": ",".join(self.decimal_columns),
            "tickvault.json_columns": ",".join(self.json_columns),
        })


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _base_type(pg_type: str) -> str:
    """``numeric(12,4)`` -> ``numeric``, ``character varying(20)`` -> ``character varying``."""
    head, _, rest = pg_type.partition("(")
    return head + rest[rest.index(")") + 1:] if rest else pg_type


def _arrow_type(pg_type: str, table: str, column: str) -> pa.DataType:
    pg_type = _base_type(pg_type)
    if pg_type == "character varying" or pg_type in _TEXT_TYPES:
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
            type without an exact Arrow mapping (the message names the column and its type).
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
    sort_key = tuple(group + [c for c in key if c not in ("venue", ACCOUNT_COLUMN, *group)])
    kinds = {name: _TEXT_TYPES.get(_base_type(typ)) for name, typ, _ in columns}
    return TableLayout(table, schema, time_column, key, sort_key,
                       tuple(c for c, k in kinds.items() if k == "decimal"),
                       tuple(c for c, k in kinds.items() if k == "json"))


def partition_prefix(prefix: str, venue: str, table: str, day: date,
                     account_id: int | None = None) -> str:
    """``<prefix>/venue=<venue>/table=<table>/date=<YYYY-MM-DD>/``, or for one account of a
    private table ``<prefix>/venue=<venue>/account=<account_id>/table=...`` (no leading '/'
    when ``prefix`` is empty)."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    parts.append(f"venue={venue}")
    if account_id is not None:
        parts.append(f"account={account_id}")
    return "/".join([*parts, f"table={table}", f"date={day.isoformat()}"]) + "/"


def unit_name(unit: Unit) -> str:
    """``deribit`` or ``bybit/account=7``: a partition unit in messages."""
    venue, account = unit
    return venue if account is None else f"{venue}/account={account}"


def unit_order(unit: Unit) -> tuple[str, int]:
    """Sort key of units: venue, then account id (public tables have none)."""
    return unit[0], -1 if unit[1] is None else unit[1]


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

