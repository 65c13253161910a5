"""Dagster glue for the orchestration tests: resources and in-process materialisation."""

from __future__ import annotations

import asyncio

import dagster as dg
import psycopg

from orchestration.defs import checks
from orchestration.defs.assets.backfill import build_trades_backfill
from orchestration.defs.assets.candles import candles
from orchestration.defs.assets.gaps import build_trade_gaps
from orchestration.defs.assets.universe import build_instrument_universe
from collector_daemon.core import recovery
from collector_daemon.core.days import to_us
from collector_daemon.venues import get_venue
from orchestration.resources import DatabaseResource, VenueApiResource

#: A REST URL nothing listens on (for assets that must not call REST).
NO_REST = "http://127.0.0.1:9/api/v2"

#: Deribit's assets (``deribit/...``), whatever TICKVAULT_VENUES the session has.
instrument_universe = build_instrument_universe("deribit")
trade_gaps = build_trade_gaps("deribit")
trades_backfill = build_trades_backfill("deribit")

ALL_CHECKS = ([v for v in vars(checks).values() if isinstance(v, dg.AssetChecksDefinition)]
              + checks.build_venue_checks("deribit"))


def resources(dsn: str, rest_url: str = NO_REST, history_url: str | None = None, **deribit) -> dict:
    """Resources as in production, pointed at the test database and REST endpoint; ``deribit``:
    Deribit settings by field name (``currency="BTC"``, ``top_n=None`` for all)."""
    options = {k: ("all" if v is None else ",".join(v) if isinstance(v, (list, tuple)) else str(v))
               for k, v in deribit.items()}
    return {"database": DatabaseResource(url=dsn),
            "deribit": VenueApiResource(venue="deribit", base_url=rest_url, history_url=history_url,
                                        options=options)}


def backfill_day(dsn: str, venue: str, day, *, rest_url: str, now=None, **settings):
    """The trades_backfill asset's library call for one venue and day (``now``: aware datetime)."""
    v = get_venue(venue)
    return asyncio.run(recovery.backfill_day(dsn, v, v.load_settings(rest_url=rest_url, **settings),
                                             day, now_us=to_us(now) if now else None))


def checks_of(asset_key: str) -> list[dg.AssetChecksDefinition]:
    """The asset check definitions targeting ``asset_key``."""
    return [c for c in ALL_CHECKS
            if any(k.asset_key.to_user_string() == asset_key for k in c.check_keys)]


def materialize(assets: list, partition: str | None, res: dict, *, with_checks: bool = False,
                instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    """Materialise ``assets`` (and optionally their checks) for one partition, in process."""
    selection = list(assets)
    if with_checks:
        for a in assets:
            selection += checks_of(a.key.to_user_string())
    return dg.materialize(selection, partition_key=partition, resources=res,
                          instance=instance or dg.DagsterInstance.ephemeral())


def mat_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    """Metadata values of the materialisation in ``result`` of the asset whose key ends with
    ``name`` (``trade_gaps`` for ``deribit/trade_gaps``)."""
    [mat] = [e.materialization for e in result.get_asset_materialization_events()
             if e.asset_key.path[-1] == name]
    return {k: v.value for k, v in mat.metadata.items()}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    """Check name -> evaluation."""
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def gaps(dsn: str, *where: str, params: tuple = ()) -> list[dict]:
    """data_gaps rows (as dicts) ordered by stream, instrument, start."""
    sql = "SELECT * FROM data_gaps" + (" WHERE " + " AND ".join(where) if where else "")
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql + " ORDER BY stream, instrument_name, gap_start, gap_id", params)
        cols = [c.name for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


__all__ = ["NO_REST", "backfill_day", "candles", "check_results", "checks_of", "gaps", "instrument_universe",
           "mat_metadata", "materialize", "resources", "trade_gaps", "trades_backfill"]
