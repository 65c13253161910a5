"""Data-quality checks, one result per day partition, querying the database directly.

Checks are separate ``@asset_check`` definitions with the daily partitions (they take the asset as
a dependency, not as an input, so nothing is loaded through an IO manager). Every venue gets the
checks its streams call for (:func:`build_venue_checks`) on its own ``<venue>/trade_gaps`` and
``<venue>/trades_backfill``: quote checks where its ticker stream is the shared ``quotes``
table, duplicate and range checks where its trades are the shared ``trades`` table,
``trade_seq_continuity`` where trades carry a sequence, ``open_interest_vs_rest`` where the
venue serves an open-interest snapshot, ``trade_coverage`` on every trade stream with a
``source`` column. The private checks are inline in ``assets/private.py``. Severity: ERROR for
duplicates, out-of-range values and candles inconsistent with trades; WARN for coverage, crossed
quotes, freshness, trade_seq continuity and open interest vs REST.
"""

import asyncio
from datetime import timedelta

import dagster as dg

from collector_daemon.core import days
from collector_daemon.core.days import day_window
from orchestration.lib import quality
from collector_daemon.venues import Recovery, StreamSpec, Venue, get_venue
from orchestration.partitions import VENUES, daily, venue_key
from orchestration.resources import DatabaseResource

WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR


def _result(outcome: quality.CheckOutcome, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    meta = {k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v)
            for k, v in outcome.metadata.items() if v is not None}
    return dg.AssetCheckResult(passed=bool(outcome.passed), severity=severity, metadata=meta)


def build_venue_checks(venue: str) -> list[dg.AssetChecksDefinition]:
    """The asset checks of ``venue``'s ``trade_gaps`` and ``trades_backfill`` (see the module
    docstring for which apply), each evaluated for one day partition of that venue only."""
    registered = get_venue(venue)
    specs = registered.stream_specs()
    gaps_key, backfill_key = venue_key(venue, "trade_gaps"), venue_key(venue, "trades_backfill")
    quotes_shared = any(s.per_instrument and s.table.name == "quotes" for s in specs)
    trades_shared = any(s.table.name == "trades" for s in specs)
    sequenced = any(s.recovery is Recovery.SEQUENCE for s in specs)
    with_source = [s for s in specs if not s.per_instrument and "source" in s.table.columns]
    out: list[dg.AssetChecksDefinition] = []

    def check(asset: dg.AssetKey, name: str, description: str, **kw):
        def wrap(fn):
            out.append(dg.asset_check(asset=asset, name=name, partitions_def=daily,
                                      description=f"{venue}: {description}", **kw)(fn))
            return fn
        return wrap

    if quotes_shared:
        @check(gaps_key, "quote_freshness", "newest quote of the day is at most 120 s old (now, or "
                                            "the end of a past day).")
        def _freshness(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.quote_freshness(conn, venue, context.partition_key), WARN)

        @check(gaps_key, "quote_coverage", "every instrument subscribed all day has quotes in >= 98% "
                                           "of its minutes.")
        def _coverage(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.quote_coverage(conn, venue, context.partition_key), WARN)

        @check(gaps_key, "crossed_quotes", "no quote with best_bid_price > best_ask_price (both sides "
                                           "present).")
        def _crossed(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.crossed_quotes(conn, context.partition_key, venue=venue), WARN)

        @check(gaps_key, "quotes_in_range", "quote prices, amounts, open interest and IVs within sane "
                                            "ranges.")
        def _quote_ranges(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.value_ranges(conn, "quotes", context.partition_key, venue=venue),
                               ERROR)

        @check(gaps_key, "quotes_no_duplicates", "no duplicate quotes on the natural key (exchange_ts, "
                                                 "instrument_name, venue).")
        def _quote_dups(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.quote_duplicates(conn, context.partition_key, venue=venue), ERROR)

    if type(registered).open_interest is not Venue.open_interest:
        @check(gaps_key, "open_interest_vs_rest", "current day: sum of open interest of the latest "
                                                  "quotes within 5% of the REST book summary.",
               required_resource_keys={"database", venue})
        def _oi(context: dg.AssetCheckExecutionContext):
            now = days.utcnow()
            start, end = day_window(context.partition_key)
            if not (start <= now < end):
                return dg.AssetCheckResult(passed=True, severity=WARN, metadata={
                    "evaluated": False,
                    "note": "REST reports open interest now; the comparison runs for the current UTC "
                            "day only"})
            api = getattr(context.resources, venue)

            async def snapshot():
                async with api.client(dsn=context.resources.database.url) as rest:
                    return await api.registered.open_interest(rest, api.settings())

            rest_oi = asyncio.run(snapshot()) or {}
            with context.resources.database.connect() as conn:
                quoted = quality.latest_open_interest(conn, venue, max(start, now - timedelta(minutes=15)), now)
            outcome = quality.open_interest_vs_rest(quoted, rest_oi)
            outcome.metadata["evaluated"] = True
            return _result(outcome, WARN)

    if trades_shared:
        @check(backfill_key, "trades_no_duplicates", "no duplicate trades: (instrument, trade_id) and "
                                                     "(instrument, trade_seq) unique.")
        def _trade_dups(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.trade_duplicates(conn, context.partition_key, venue=venue), ERROR)

        @check(backfill_key, "trades_in_range", "trade prices, amounts and IVs within sane ranges.")
        def _trade_ranges(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.value_ranges(conn, "trades", context.partition_key, venue=venue),
                               ERROR)

    if sequenced:
        @check(backfill_key, "trade_seq_continuity", "trade_seq has no holes after the backfill; "
                                                     "remaining holes and open gaps listed.")
        def _continuity(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.trade_seq_continuity(conn, venue, context.partition_key), WARN)

    def coverage(spec: StreamSpec) -> None:
        @check(backfill_key, "trade_coverage" if len(with_source) == 1 else f"{spec.name}_coverage",
               f"share of the day's {spec.name} the live stream delivered (source=ws) rather than the "
               "REST backfill; open and unrecoverable gaps listed.")
        def _trade_coverage(context: dg.AssetCheckExecutionContext, database: DatabaseResource):
            with database.connect() as conn:
                return _result(quality.trade_coverage(conn, venue, spec.table.name, spec.name,
                                                      context.partition_key), WARN)

    for spec in with_source:
        coverage(spec)
    return out


#: The checks of every recorded venue's daily assets.
VENUE_CHECKS: list[dg.AssetChecksDefinition] = [c for v in VENUES for c in build_venue_checks(v)]


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
