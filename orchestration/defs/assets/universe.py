"""Instrument universe: reference data and the ranked subscription set of every registered
venue and universe group, refreshed hourly."""

import asyncio

import dagster as dg

from collector_daemon.core.universe import UNIVERSE_CHANNEL, refresh_universe
from orchestration.partitions import VENUES

UNIVERSE_GROUP = "universe"


@dg.asset(
    group_name=UNIVERSE_GROUP,
    kinds={"python", "timescaledb"},
    owners=["team:tickvault"],
    pool="venue_rest",
    required_resource_keys={"database", *VENUES},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.PLUS_MINUS),
    metadata={"tables": "instruments, universe_versions", "notify_channel": UNIVERSE_CHANNEL},
)
def instrument_universe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Live instruments and open interest from each venue's REST, upserted with the ranked subscription set."""
    dsn = context.resources.database.url
    meta: dict = {}
    totals = {"instruments": 0, "with_open_interest": 0, "deactivated": 0, "subscribed": 0,
              "rest_calls": 0, "rest_retries": 0}
    added: list[str] = []
    removed: list[str] = []
    top: list[str] = []
    versions: list[int] = []
    tops: dict[str, object] = {}
    changed = False
    for name in VENUES:
        api = getattr(context.resources, name)
        venue, settings = api.registered, api.settings()

        async def run():
            async with api.client() as rest:
                results = [await refresh_universe(dsn, venue, settings, rest, group)
                           for group in settings.universe_groups()]
                return results, rest.calls, rest.retries

        results, calls, retries = asyncio.run(run())
        totals["rest_calls"] += calls
        totals["rest_retries"] += retries
        for group, result in zip(settings.universe_groups(), results):
            if result.changed:
                context.log.info(f"{name} {group}: universe version {result.version}: "
                                 f"{len(result.selected)} subscribed, +{len(result.added)} "
                                 f"-{len(result.removed)}; NOTIFY {UNIVERSE_CHANNEL} sent")
            else:
                context.log.info(f"{name} {group}: universe unchanged (version {result.version})")
            totals["instruments"] += result.instruments
            totals["with_open_interest"] += result.with_open_interest
            totals["deactivated"] += result.deactivated
            totals["subscribed"] += len(result.selected)
            changed |= result.changed
            added += result.added
            removed += result.removed
            top += result.selected[:10]
            versions.append(result.version)
            meta[f"{name}/{group}/version"] = result.version
            meta[f"{name}/{group}/subscribed"] = len(result.selected)
        kinds = venue.universe_kinds(settings)
        meta[f"{name}/groups"] = ", ".join(settings.universe_groups())
        meta[f"{name}/kinds"] = ", ".join(kinds)
        tops[name] = settings.top_n if settings.top_n is not None else "all"
    return dg.MaterializeResult(metadata={
        **meta, **totals,
        "top_n": (next(iter(tops.values())) if len(set(tops.values())) == 1
                  else dg.MetadataValue.json(tops)),
        "version": max(versions, default=0),
        "changed": changed,
        "added": dg.MetadataValue.json(added[:200]),
        "removed": dg.MetadataValue.json(removed[:200]),
        "top_10": dg.MetadataValue.json(top[:10]),
    })
