"""Instrument universe: reference data and the ranked subscription set of one venue (all its
universe groups), refreshed hourly. One asset per recorded venue, ``<venue>/instrument_universe``
in the venue's group (:func:`build_instrument_universe`)."""

import asyncio

import dagster as dg

from collector_daemon.core.universe import UNIVERSE_CHANNEL, refresh_universe
from orchestration.partitions import VENUES, venue_key, venue_rest_asset



def build_instrument_universe(venue: str) -> dg.AssetsDefinition:
    """The ``<venue>/instrument_universe`` asset (group ``venue``; resources ``database`` and
    the venue's :class:`~orchestration.resources.VenueApiResource` keyed by its name).

    Materialising it refreshes every universe group of the venue (Deribit: its currencies;
    Bybit: linear, spot and one group per option base coin) through
    ``collector_daemon.core.universe.refresh_universe``; metadata per group
    (``<group>/version``, ``<group>/subscribed``) and totals.
    """

    @dg.asset(
        key=venue_key(venue, "instrument_universe"),
        **venue_rest_asset(venue, retry_delay_s=30),
        metadata={"tables": "instruments, universe_versions", "notify_channel": UNIVERSE_CHANNEL,
                  "venue": venue},
        description=f"{venue}: live instruments and open interest from REST, upserted with the ranked "
                    "subscription set.",
    )
    def _universe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        api = getattr(context.resources, venue)
        registered, settings = api.registered, api.settings()
        groups = settings.universe_groups()

        async def run():
            async with api.client(dsn=context.resources.database.url) as rest:
                results = [await refresh_universe(context.resources.database.url, registered, settings,
                                                  rest, group) for group in groups]
                return results, rest.calls, rest.retries

        results, calls, retries = asyncio.run(run())
        meta: dict = {}
        added: list[str] = []
        removed: list[str] = []
        top: list[str] = []
        for group, result in zip(groups, results):
            if result.changed:
                context.log.info(f"{venue} {group}: universe version {result.version}: "
                                 f"{len(result.selected)} subscribed, +{len(result.added)} "
                                 f"-{len(result.removed)}; NOTIFY {UNIVERSE_CHANNEL} sent")
            else:
                context.log.info(f"{venue} {group}: universe unchanged (version {result.version})")
            added += result.added
            removed += result.removed
            top += result.selected[:10]
            meta[f"{group}/version"] = result.version
            meta[f"{group}/subscribed"] = len(result.selected)
        return dg.MaterializeResult(metadata={
            **meta,
            "groups": ", ".join(groups),
            "kinds": ", ".join(registered.universe_kinds(settings)),
            "instruments": sum(r.instruments for r in results),
            "with_open_interest": sum(r.with_open_interest for r in results),
            "deactivated": sum(r.deactivated for r in results),
            "subscribed": sum(len(r.selected) for r in results),
            "rest_calls": calls,
            "rest_retries": retries,
            "top_n": settings.top_n if settings.top_n is not None else "all",
            "version": max((r.version for r in results), default=0),
            "changed": any(r.changed for r in results),
            "added": dg.MetadataValue.json(added[:200]),
            "removed": dg.MetadataValue.json(removed[:200]),
            "top_10": dg.MetadataValue.json(top[:10]),
        })

    return _universe


#: One universe asset per recorded venue (``orchestration.partitions.VENUES``).
UNIVERSE_ASSETS: list[dg.AssetsDefinition] = [build_instrument_universe(v) for v in VENUES]
