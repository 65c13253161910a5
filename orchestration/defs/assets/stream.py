"""The collector's tables, as external assets: written by the streaming daemon, not by Dagster.

They anchor the lineage (every derived asset lists them as upstream) and receive observations
(freshness, row counts) from ``sensors.collector_tables_observer``.
"""

import dagster as dg

from collector_daemon.rows import TABLES
from collector_daemon.venues import get_venue
from orchestration.partitions import VENUES

LIVE_GROUP = "live_capture"

_OWNER = ["team:tickvault"]


def _table(name: str, description: str, time_column: str) -> dg.AssetSpec:
    """An external asset for one collector table; its natural key comes from the row specs."""
    metadata = {"table": name, "time_column": time_column}
    spec = TABLES.get(name)
    if spec is not None and spec.natural_key:
        metadata["natural_key"] = ", ".join(spec.natural_key)
    return dg.AssetSpec(name, description=description, group_name=LIVE_GROUP, kinds={"timescaledb"},
                        owners=_OWNER, metadata=metadata)


quotes = _table("quotes", "Top of book, mark, IVs and greeks per ticker notification (written by the "
                "collector).", "exchange_ts")
trades = _table("trades", "Every public trade exactly once: live stream (source=ws) and REST recovery "
                "(source=rest).", "exchange_ts")
connection_events = _table("connection_events", "WebSocket lifecycle per connection: connects, "
                           "subscribe acks, disconnects, lost windows.", "event_ts")
rejected_messages = _table("rejected_messages", "Frames and rows the collector could not decode or "
                           "the database refused.", "received_at")
collector_status = _table("collector_status", "One heartbeat row per running collector.", "heartbeat_at")

#: The external specs, in the order the observation sensor reports them.
COLLECTOR_TABLES = [quotes, trades, connection_events, rejected_messages, collector_status]


def _venue_tables() -> list[dg.AssetSpec]:
    """External specs for the stream tables of the recorded venues that are not shared tables
    (Bybit's ``bybit_tickers``, ``bybit_trades``), so each venue's audit shows the tables it reads."""
    shared = {spec.metadata["table"] for spec in COLLECTOR_TABLES}
    out: dict[str, dg.AssetSpec] = {}
    for venue in VENUES:
        for stream in get_venue(venue).stream_specs():
            name = stream.table.name
            if name not in shared and name not in out:
                out[name] = _table(name, f"{venue} {stream.name} stream (written by the collector).",
                                   "exchange_ts")
    return list(out.values())


#: External specs of the venues' own stream tables (observed by the sensor like the shared ones).
VENUE_TABLES: list[dg.AssetSpec] = _venue_tables()


def stream_specs_of(venue: str) -> list[dg.AssetSpec]:
    """The external specs of ``venue``'s stream tables (what its gap audit reads)."""
    by_table = {spec.metadata["table"]: spec for spec in COLLECTOR_TABLES + VENUE_TABLES}
    names = dict.fromkeys(s.table.name for s in get_venue(venue).stream_specs())
    return [by_table[n] for n in names if n in by_table]
