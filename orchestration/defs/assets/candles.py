"""OHLCV candles per instrument, from trades."""

import dagster as dg

from orchestration.defs.assets.gaps import ONE_DAY_PER_RUN
from orchestration.defs.assets.stream import stream_specs_of
from orchestration.lib.candles import INTERVALS, build_candles, trade_sources
from orchestration.partitions import VENUES, daily, venue_key
from orchestration.resources import DatabaseResource

CANDLES_GROUP = "candles"


@dg.asset(
    partitions_def=daily,
    backfill_policy=ONE_DAY_PER_RUN,
    deps=[*{s.key: s for v in VENUES for s in stream_specs_of(v)
            if s.metadata["table"] in {src.table for src in trade_sources()}}.values(),
          *(venue_key(v, "trades_backfill") for v in VENUES)],
    group_name=CANDLES_GROUP,
    kinds={"sql", "timescaledb"},
    owners=["team:tickvault"],
    metadata={"table": "candles", "intervals": ", ".join(INTERVALS),
              "trades_tables": ", ".join(src.table for src in trade_sources())},
)
def candles(context: dg.AssetExecutionContext, database: DatabaseResource) -> dg.MaterializeResult:
    """1m OHLCV, trade count and VWAP per instrument from every venue's trades, rolled up to 5m..1d and the week."""
    with database.connect() as conn:
        report = build_candles(conn, context.partition_key)
    context.log.info(f"candles {report.day}: {report.rows} from {report.trades} trades of "
                     f"{report.instruments} instrument(s) ({report.bucket_function}), "
                     f"{report.deleted} stale deleted")
    return dg.MaterializeResult(metadata={
        "day": str(report.day),
        "trades": report.trades,
        "instruments": report.instruments,
        **{f"rows_{k}": v for k, v in report.rows.items()},
        "deleted_stale": report.deleted,
        "bucket_function": report.bucket_function,
        "seconds": round(report.seconds, 3),
    })
