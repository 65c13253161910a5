"""Instrument universe: reference data and the ranked subscription set, refreshed hourly."""

import asyncio

import dagster as dg

from orchestration.lib.universe import UNIVERSE_CHANNEL, refresh_universe
from orchestration.resources import DatabaseResource, DeribitApiResource

UNIVERSE_GROUP = "universe"


@dg.asset(
    group_name=UNIVERSE_GROUP,
    kinds={"python", "timescaledb"},
    owners=["team:tickvault"],
    pool="deribit_rest",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.PLUS_MINUS),
    metadata={"tables": "instruments, universe_versions", "notify_channel": UNIVERSE_CHANNEL},
)
def instrument_universe(context: dg.AssetExecutionContext, database: DatabaseResource,
                        deribit: DeribitApiResource) -> dg.MaterializeResult:
    """Live instruments and open interest from Deribit REST, upserted with the ranked subscription set."""

    async def run():
        async with deribit.client() as rest:
            result = await refresh_universe(database.url, rest, currency=deribit.currency,
                                            kinds=tuple(deribit.kinds), top_n=deribit.top_n)
            return result, rest.calls, rest.retries

    result, calls, retries = asyncio.run(run())
    if result.changed:
        context.log.info(f"universe version {result.version}: {len(result.selected)} subscribed, "
                         f"+{len(result.added)} -{len(result.removed)}; NOTIFY {UNIVERSE_CHANNEL} sent")
    else:
        context.log.info(f"universe unchanged (version {result.version})")
    return dg.MaterializeResult(metadata={
        "currency": deribit.currency,
        "kinds": ", ".join(deribit.kinds),
        "top_n": deribit.top_n if deribit.top_n is not None else "all",
        "instruments": result.instruments,
        "with_open_interest": result.with_open_interest,
        "deactivated": result.deactivated,
        "subscribed": len(result.selected),
        "version": result.version,
        "changed": result.changed,
        "added": dg.MetadataValue.json(result.added[:200]),
        "removed": dg.MetadataValue.json(result.removed[:200]),
        "top_10": dg.MetadataValue.json(result.selected[:10]),
        "rest_calls": calls,
        "rest_retries": retries,
    })
