"""REST backfill of the trade gaps the audit found."""

import dagster as dg

from collector_daemon.venues.deribit.messages import VENUE
from orchestration.defs.assets.gaps import ONE_DAY_PER_RUN
from orchestration.lib.backfill import backfill_day
from orchestration.partitions import daily
from orchestration.resources import DatabaseResource, DeribitApiResource

BACKFILL_GROUP = "backfill"


@dg.asset(
    partitions_def=daily,
    backfill_policy=ONE_DAY_PER_RUN,
    deps=["trade_gaps"],
    group_name=BACKFILL_GROUP,
    kinds={"python", "timescaledb"},
    owners=["team:tickvault"],
    pool="deribit_rest",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.PLUS_MINUS),
    metadata={"table": "trades (source=rest), data_gaps"},
)
def trades_backfill(context: dg.AssetExecutionContext, database: DatabaseResource,
                    deribit: DeribitApiResource) -> dg.MaterializeResult:
    """Fills the day's open trade gaps from Deribit REST (source=rest) and resolves them in data_gaps."""
    day = context.partition_key
    step = {"every": 1}

    def progress(done: int, total: int, outcome) -> None:
        if done == 1:
            step["every"] = max(1, total // 10)
        if done % step["every"] == 0 or done == total:
            g = outcome.gap
            context.log.info(f"gap {done}/{total} #{g.gap_id} {g.stream} {g.instrument_name} "
                             f"{outcome.plan.method}: {outcome.status}, {outcome.fetched} fetched, "
                             f"{outcome.inserted} new")

    report = backfill_day(database.url, VENUE, day, deribit.rest_config(), progress=progress)
    meta = {
        "day": day,
        "gaps": len(report.outcomes),
        "backfilled": report.count("backfilled"),
        "unrecoverable": report.count("unrecoverable"),
        "still_open": report.count("open"),
        "trades_fetched": report.trades_fetched,
        "trades_inserted": report.trades_inserted,
        "rest_calls": report.rest_calls,
        "rest_retries": report.rest_retries,
        "seconds": round(report.seconds, 3),
        "by_method": dg.MetadataValue.json({
            method: sum(1 for o in report.outcomes if o.plan.method == method)
            for method in ("seq", "time", "none")}),
    }
    context.log.info(f"backfill {day}: {meta['gaps']} gap(s): {meta['backfilled']} backfilled, "
                     f"{meta['unrecoverable']} unrecoverable, {meta['still_open']} still open; "
                     f"{meta['trades_inserted']} trades inserted ({meta['trades_fetched']} fetched, "
                     f"{meta['rest_calls']} REST calls)")
    if report.errors:
        raise dg.Failure(
            description=f"{len(report.errors)} gap(s) stayed open because REST failed: "
                        + "; ".join(f"#{o.gap.gap_id}: {o.note}" for o in report.errors[:5]),
            metadata=meta)
    return dg.MaterializeResult(metadata=meta)
