"""REST backfill of the gaps the audit found: one asset per recorded venue,
``<venue>/trades_backfill`` in the venue's group (:func:`build_trades_backfill`)."""

import asyncio

import dagster as dg

from collector_daemon.core import recovery
from orchestration.defs.assets.gaps import ONE_DAY_PER_RUN
from orchestration.partitions import VENUES, daily, venue_key, venue_rest_asset



def build_trades_backfill(venue: str) -> dg.AssetsDefinition:
    """The ``<venue>/trades_backfill`` asset (daily partitions, downstream of
    ``<venue>/trade_gaps``; resources ``database`` and the venue's REST resource): fills the
    day's open gaps of ``venue`` from its REST (``collector_daemon.core.recovery.backfill_day``,
    rows ``source='rest'``) and resolves them in ``data_gaps`` (``backfilled`` or
    ``unrecoverable`` with the reason).

    Raises (in the run):
        dagster.Failure: gaps stayed open because REST failed (the metadata is kept).
    """

    @dg.asset(
        key=venue_key(venue, "trades_backfill"),
        partitions_def=daily,
        backfill_policy=ONE_DAY_PER_RUN,
        deps=[venue_key(venue, "trade_gaps")],
        **venue_rest_asset(venue),
        metadata={"table": "trades (source=rest), data_gaps", "venue": venue},
        description=f"{venue}: fills the day's open gaps from REST (source=rest) and resolves them in "
                    "data_gaps.",
    )
    def _backfill(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        day = context.partition_key
        step = {"every": 1}

        def progress(done: int, total: int, outcome) -> None:
            if done == 1:
                step["every"] = max(1, total // 10)
            if done % step["every"] == 0 or done == total:
                g = outcome.gap
                context.log.info(f"gap {done}/{total} #{g.gap_id} {g.stream} {g.instrument_name} "
                                 f"{outcome.plan.method}: {outcome.status.value}, {outcome.fetched} "
                                 f"fetched, {outcome.inserted} new")

        api = getattr(context.resources, venue)
        report = asyncio.run(recovery.backfill_day(
            context.resources.database.url, api.registered, api.settings(), day,
            now_us=recovery.wall_clock_us(), max_concurrency=api.max_concurrency, progress=progress))
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
            "by_stream": dg.MetadataValue.json({
                stream: {status: sum(1 for o in report.outcomes
                                     if o.gap.stream == stream and o.status.value == status)
                         for status in ("backfilled", "unrecoverable", "open")}
                for stream in sorted({o.gap.stream for o in report.outcomes})}),
        }
        context.log.info(f"{venue} backfill {day}: {meta['gaps']} gap(s): {meta['backfilled']} "
                         f"backfilled, {meta['unrecoverable']} unrecoverable, {meta['still_open']} still "
                         f"open; {meta['trades_inserted']} trades inserted ({meta['trades_fetched']} "
                         f"fetched, {meta['rest_calls']} REST calls)")
        if report.errors:
            raise dg.Failure(
                description=f"{venue}: {len(report.errors)} gap(s) stayed open because REST failed: "
                            + "; ".join(f"#{o.gap.gap_id}: {o.note}" for o in report.errors[:5]),
                metadata=meta)
        return dg.MaterializeResult(metadata=meta)

    return _backfill


#: One REST backfill per recorded venue (``orchestration.partitions.VENUES``).
BACKFILL_ASSETS: list[dg.AssetsDefinition] = [build_trades_backfill(v) for v in VENUES]
