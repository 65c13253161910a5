"""Row shapes of the tables the collector writes: one definition used by the venue parsers,
the writer, the spool and the exports.

A row is a plain tuple whose fields follow ``TableSpec.columns``. Timestamp fields are integers
in **microseconds since the Unix epoch (UTC)**; the writer's connections encode them straight to
``timestamptz`` without building ``datetime`` objects (ingest-measurements.md section 1). Prices,
amounts, IVs and greeks are Python floats exactly as decoded from the venue's JSON (no rounding).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one table is written.

    Attributes:
        name: table name in the database.
        columns: column order of the row tuples.
        natural_key: columns of the table's unique constraint; empty for append-only tables
            (those are written with a plain COPY; keyed tables are insert-if-absent).
        timestamp_columns: columns holding µs-since-epoch integers.
        upsert: for keyed tables whose rows are updated in place (an exchange's open candle),
            the SQL after ``ON CONFLICT`` (``(key) DO UPDATE SET ... WHERE ...``); such rows
            always go through the staging table, the last row per key of a batch wins. None =
            insert-if-absent.
    """

    name: str
    columns: tuple[str, ...]
    natural_key: tuple[str, ...] = ()
    timestamp_columns: tuple[str, ...] = ()
    upsert: str | None = None

    @property
    def exchange_ts_index(self) -> int | None:
        """Position of ``exchange_ts`` in the row tuples (None when the table has none)."""
        return self.columns.index("exchange_ts") if "exchange_ts" in self.columns else None

    @property
    def keyed(self) -> bool:
        """True when rows must be written insert-if-absent (the table has a natural key)."""
        return bool(self.natural_key)


QUOTES = TableSpec(
    "quotes",
    (
        "venue", "instrument_name", "exchange_ts", "receive_ts",
        "best_bid_price", "best_bid_amount", "best_ask_price", "best_ask_amount",
        "mark_price", "mark_iv", "bid_iv", "ask_iv", "underlying_price", "underlying_index",
        "index_price", "open_interest", "last_price",
        "delta", "gamma", "vega", "theta", "rho", "interest_rate", "state",
    ),
    natural_key=("exchange_ts", "instrument_name", "venue"),
    timestamp_columns=("exchange_ts", "receive_ts"),
)

TRADES = TableSpec(
    "trades",
    (
        "venue", "instrument_name", "trade_id", "trade_seq", "exchange_ts", "receive_ts",
        "price", "amount", "direction", "iv", "mark_price", "index_price",
        "tick_direction", "liquidation", "block_trade_id", "source", "ord_type",
    ),
    natural_key=("exchange_ts", "venue", "instrument_name", "trade_id"),
    timestamp_columns=("exchange_ts", "receive_ts"),
)

CONNECTION_EVENTS = TableSpec(
    "connection_events",
    (
        "venue", "connection_id", "event", "event_ts", "channels", "refused_channels",
        "reason", "window_start", "window_end",
    ),
    timestamp_columns=("event_ts", "window_start", "window_end"),
)

REJECTED_MESSAGES = TableSpec(
    "rejected_messages",
    ("received_at", "venue", "connection_id", "reason", "raw", "raw_bytes"),
    timestamp_columns=("received_at",),
)

DATA_GAPS = TableSpec(
    "data_gaps",
    (
        "venue", "stream", "instrument_name", "gap_start", "gap_end", "seq_from", "seq_to",
        "detected_by", "status", "reason",
    ),
    timestamp_columns=("gap_start", "gap_end"),
)

#: Candles as an exchange publishes them (schema/0011): an open candle is updated by later rows
#: (the stored row is the last state); a closed one never changes afterwards.
EXCHANGE_CANDLES = TableSpec(
    "exchange_candles",
    (
        "venue", "instrument_name", "interval_minutes", "interval_begin", "open", "high", "low",
        "close", "vwap", "volume", "trade_count", "closed", "source", "receive_ts",
    ),
    natural_key=("venue", "instrument_name", "interval_minutes", "interval_begin"),
    timestamp_columns=("interval_begin", "receive_ts"),
    upsert=("(venue, instrument_name, interval_minutes, interval_begin) DO UPDATE SET "
            "open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, "
            "vwap = coalesce(EXCLUDED.vwap, exchange_candles.vwap), volume = EXCLUDED.volume, "
            "trade_count = EXCLUDED.trade_count, closed = EXCLUDED.closed, source = EXCLUDED.source, "
            "receive_ts = EXCLUDED.receive_ts WHERE NOT exchange_candles.closed"),
)

#: Reference data; upserted by the universe refresh (not by the streaming writer).
INSTRUMENTS = TableSpec(
    "instruments",
    (
        "venue", "instrument_name", "kind", "base_currency", "quote_currency",
        "settlement_currency", "option_type", "strike", "expiration_timestamp", "tick_size",
        "contract_size", "min_trade_amount", "is_active", "creation_timestamp", "open_interest",
    ),
    natural_key=("venue", "instrument_name"),
    timestamp_columns=("expiration_timestamp", "creation_timestamp"),
)

#: Every table the collector's writer handles, by name: the shared ones above, plus the tables
#: venues add with :func:`register_table` (the writer's staging tables and the spool's replay
#: look tables up here).
TABLES: dict[str, TableSpec] = {
    t.name: t for t in (QUOTES, TRADES, CONNECTION_EVENTS, REJECTED_MESSAGES, DATA_GAPS,
                         EXCHANGE_CANDLES)
}


def register_table(table: TableSpec) -> TableSpec:
    """Add a venue's own table to :data:`TABLES` (idempotent for an equal spec); returns it.

    Raises:
        ValueError: another table of that name with other columns is registered.
    """
    other = TABLES.setdefault(table.name, table)
    if other != table:
        raise ValueError(f"table {table.name} registered twice with different columns")
    return table

#: The most of a rejected frame kept in rejected_messages.raw (characters).
REJECTED_RAW_CAP = 65_536
