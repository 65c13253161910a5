"""Data-quality checks, one result per day partition, querying the database directly.

Checks are separate ``@asset_check`` definitions with the daily partitions (they take the asset as
a dependency, not as an input, so nothing is loaded through an IO manager). Severity: ERROR for
duplicates, out-of-range values and candles inconsistent with trades; WARN for coverage, crossed
quotes, freshness, trade_seq continuity and open interest vs REST.
"""

import asyncio
from datetime import timedelta

import dagster as dg

from collector_daemon.venues.deribit.messages import VENUE
from orchestration.lib import days, quality
from orchestration.lib.days import day_window
from orchestration.partitions import VENUES, daily
from orchestration.resources import DatabaseResource, DeribitApiResource

WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR


def _result(outcome: quality.CheckOutcome, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    meta = {k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v)
            for k, v in outcome.metadata.items() if v is not None}
    return dg.AssetCheckResult(passed=bool(outcome.passed), severity=severity, metadata=meta)


def _merge(outcomes: dict[str, quality.CheckOutcome]) -> quality.CheckOutcome:
    """One outcome out of per-venue outcomes (metadata keys prefixed by venue)."""
    meta = {f"{v}/{k}": x for v, o in outcomes.items() for k, x in o.metadata.items()}
    return quality.CheckOutcome(all(o.passed for o in outcomes.values()), meta)


# --- on trade_gaps (the live capture of the day) ----------------------------------------------

@dg.asset_check(asset="trade_gaps", partitions_def=daily,
                description="Newest quote of the day is at most 120 s old (now, or the end of a past day).")
def quote_freshness(context: dg.AssetCheckExecutionContext,
                    database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(_merge({v: quality.quote_freshness(conn, v, context.partition_key)
                               for v in VENUES}), WARN)


@dg.asset_check(asset="trade_gaps", partitions_def=daily,
                description="Every instrument subscribed all day has quotes in >= 98% of its minutes.")
def quote_coverage(context: dg.AssetCheckExecutionContext,
                   database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(_merge({v: quality.quote_coverage(conn, v, context.partition_key)
                               for v in VENUES}), WARN)


@dg.asset_check(asset="trade_gaps", partitions_def=daily,
                description="No quote with best_bid_price > best_ask_price (both sides present).")
def crossed_quotes(context: dg.AssetCheckExecutionContext,
                   database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.crossed_quotes(conn, context.partition_key), WARN)


@dg.asset_check(asset="trade_gaps", partitions_def=daily,
                description="Quote prices, amounts, open interest and IVs within sane ranges.")
def quotes_in_range(context: dg.AssetCheckExecutionContext,
                    database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.value_ranges(conn, "quotes", context.partition_key), ERROR)


@dg.asset_check(asset="trade_gaps", partitions_def=daily,
                description="No duplicate quotes on the natural key (exchange_ts, instrument_name, venue).")
def quotes_no_duplicates(context: dg.AssetCheckExecutionContext,
                         database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.quote_duplicates(conn, context.partition_key), ERROR)


@dg.asset_check(asset="trade_gaps", partitions_def=daily,
                description="Current day: sum of open interest of the latest quotes within 5% of the REST book summary.")
def open_interest_vs_rest(context: dg.AssetCheckExecutionContext, database: DatabaseResource,
                          deribit: DeribitApiResource) -> dg.AssetCheckResult:
    now = days.utcnow()
    start, end = day_window(context.partition_key)
    if not (start <= now < end):
        return dg.AssetCheckResult(passed=True, severity=WARN, metadata={
            "evaluated": False,
            "note": "REST reports open interest now; the comparison runs for the current UTC day only"})
    with database.connect() as conn:
        quoted = quality.latest_open_interest(conn, VENUE, max(start, now - timedelta(minutes=15)), now)

    async def summary():
        async with deribit.client() as rest:
            rows = []
            for kind in deribit.kinds:
                rows += await rest.get_book_summary_by_currency(deribit.currency, kind=kind)
            return {r.instrument_name: r.open_interest for r in rows if r.open_interest is not None}

    outcome = quality.open_interest_vs_rest(quoted, asyncio.run(summary()))
    outcome.metadata["evaluated"] = True
    return _result(outcome, WARN)


# --- on trades_backfill (trades of the day after recovery) ------------------------------------

@dg.asset_check(asset="trades_backfill", partitions_def=daily,
                description="No duplicate trades: (venue, instrument, trade_id) and (venue, instrument, trade_seq) unique.")
def trades_no_duplicates(context: dg.AssetCheckExecutionContext,
                         database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.trade_duplicates(conn, context.partition_key), ERROR)


@dg.asset_check(asset="trades_backfill", partitions_def=daily,
                description="trade_seq has no holes after the backfill; remaining holes and open gaps listed.")
def trade_seq_continuity(context: dg.AssetCheckExecutionContext,
                         database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(_merge({v: quality.trade_seq_continuity(conn, v, context.partition_key)
                               for v in VENUES}), WARN)


@dg.asset_check(asset="trades_backfill", partitions_def=daily,
                description="Trade prices, amounts and IVs within sane ranges.")
def trades_in_range(context: dg.AssetCheckExecutionContext,
                    database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.value_ranges(conn, "trades", context.partition_key), ERROR)


# --- on candles -------------------------------------------------------------------------------

@dg.asset_check(asset="candles", partitions_def=daily,
                description="Candle trade counts and volumes of every interval add up to the day's trades.")
def candles_match_trades(context: dg.AssetCheckExecutionContext,
                         database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.candles_match_trades(conn, context.partition_key), ERROR)
