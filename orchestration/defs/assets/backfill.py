"""REST backfill of the gaps the audit found, for every registered venue."""

import asyncio

import dagster as dg

from collector_daemon.core import recovery
from orchestration.defs.assets.gaps import ONE_DAY_PER_RUN
from orchestration.partitions import VENUES, daily

BACKFILL_GROUP = "backfill"


@dg.asset(
    partitions_def=daily,
    backfill_policy=ONE_DAY_PER_RUN,
    deps=["trade_gaps"],
    group_name=BACKFILL_GROUP,
    kinds={"python", "timescaledb"},
    owners=["team:tickvault"],
    pool="venue_rest",
    required_resource_keys={"database", *VENUES},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.PLUS_MINUS),
    metadata={"table": "trades (source=rest), data_gaps"},
)
def trades_backfill(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Fills the day's open gaps from each venue's REST (source=rest) and resolves them in data_gaps."""
    day = context.partition_key
    step = {"every": 1}

    def progress(done: int, total: int, outcome) -> None:
        if done == 1:
            step["every"] = max(1, total // 10)
        if done % step["every"] == 0 or done == total:
            g = outcome.gap
            context.log.info(f"gap {done}/{total} #{g.gap_id} {g.venue} {g.stream} {g.instrument_name} "
                             f"{outcome.plan.method}: {outcome.status.value}, {outcome.fetched} "
                             f"fetched, {outcome.inserted} new")

    reports = []
    for name in VENUES:
        api = getattr(context.resources, name)
        reports.append(asyncio.run(recovery.backfill_day(
            context.resources.database.url, api.registered, api.settings(), day,
            now_us=recovery.wall_clock_us(), max_concurrency=api.max_concurrency,
            progress=progress)))
    outcomes = [o for r in reports for o in r.outcomes]
    errors = [o for r in reports for o in r.errors]
    meta = {
        "day": day,
        "gaps": len(outcomes),
        "backfilled": sum(r.count("backfilled") for r in reports),
        "unrecoverable": sum(r.count("unrecoverable") for r in reports),
        "still_open": sum(r.count("open") for r in reports),
        "trades_fetched": sum(r.trades_fetched for r in reports),
        "trades_inserted": sum(r.trades_inserted for r in reports),
        "rest_calls": sum(r.rest_calls for r in reports),
        "rest_retries": sum(r.rest_retries for r in reports),
        "seconds": round(sum(r.seconds for r in reports), 3),
        "by_method": dg.MetadataValue.json({
            method: sum(1 for o in outcomes if o.plan.method == method)
            for method in ("seq", "time", "none")}),
    }
    context.log.info(f"backfill {day}: {meta['gaps']} gap(s): {meta['backfilled']} backfilled, "
                     f"{meta['unrecoverable']} unrecoverable, {meta['still_open']} still open; "
                     f"{meta['trades_inserted']} trades inserted ({meta['trades_fetched']} fetched, "
                     f"{meta['rest_calls']} REST calls)")
    if errors:
        raise dg.Failure(
            description=f"{len(errors)} gap(s) stayed open because REST failed: "
                        + "; ".join(f"#{o.gap.gap_id}: {o.note}" for o in errors[:5]),
            metadata=meta)
    return dg.MaterializeResult(metadata=meta)
