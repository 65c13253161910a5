"""Data-quality checks, one result per day partition, querying the database directly.

Checks are separate ``@asset_check`` definitions with the daily partitions (they take the asset as
a dependency, not as an input, so nothing is loaded through an IO manager). Severity: ERROR for
duplicates, out-of-range values and candles inconsistent with trades; WARN for coverage, crossed
quotes, freshness, trade_seq continuity and open interest vs REST.
"""

import asyncio
from datetime import timedelta

import dagster as dg

from collector_daemon.core import days
from collector_daemon.core.days import day_window
from orchestration.lib import quality
from orchestration.partitions import VENUES, daily
from orchestration.resources import DatabaseResource

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


@dg.asset_check(asset="trade_gaps", partitions_def=daily, required_resource_keys={"database", *VENUES},
                description="Current day: sum of open interest of the latest quotes within 5% of the REST book summary.")
def open_interest_vs_rest(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    now = days.utcnow()
    start, end = day_window(context.partition_key)
    if not (start <= now < end):
        return dg.AssetCheckResult(passed=True, severity=WARN, metadata={
            "evaluated": False,
            "note": "REST reports open interest now; the comparison runs for the current UTC day only"})
    quoted: dict[str, dict] = {}
    venue_oi: dict[str, dict] = {}
    for name in VENUES:
        api = getattr(context.resources, name)

        async def snapshot():
            async with api.client() as rest:
                return await api.registered.open_interest(rest, api.settings())

        rest_oi = asyncio.run(snapshot())
        if rest_oi is None:          # the venue offers no open interest snapshot
            continue
        with context.resources.database.connect() as conn:
            quoted[name] = quality.latest_open_interest(conn, name, max(start, now - timedelta(minutes=15)), now)
        venue_oi[name] = rest_oi

    def keyed(per_venue: dict[str, dict]) -> dict:
        # instrument names may repeat across venues (option names): prefix when several compare
        if len(per_venue) == 1:
            return next(iter(per_venue.values()))
        return {f"{v}:{k}": x for v, d in per_venue.items() for k, x in d.items()}

    outcome = quality.open_interest_vs_rest(keyed(quoted), keyed(venue_oi))
    outcome.metadata["evaluated"] = True
    outcome.metadata["venues"] = sorted(venue_oi)
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


@dg.asset_check(asset="candles", partitions_def=daily,
                description="The exchanges' own candles (exchange_candles) agree with the candles "
                            "computed from trades wherever both exist: open, high, low, close, "
                            "volume, trade count. A bucket only one side has is not compared.")
def exchange_candles_agree(context: dg.AssetCheckExecutionContext,
                           database: DatabaseResource) -> dg.AssetCheckResult:
    with database.connect() as conn:
        return _result(quality.exchange_candles_agree(conn, context.partition_key), WARN)
