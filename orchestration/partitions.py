"""Partition definitions and per-venue asset keys shared by every asset (one place, UTC)."""

import os

import dagster as dg

from collector_daemon.venues import select_venues

#: First day with data worth auditing; earlier partitions are never materialised.
START_DATE = "2021-01-01"

#: One partition per UTC day.
daily = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=1)

#: Venues the Dagster assets refresh, audit, backfill and check: ``TICKVAULT_VENUES``
#: (comma-separated registered names: the venues this deployment records), else every registered
#: venue (``collector_daemon.venues``). An unknown name fails the code location's load with the
#: known ones. Each venue gets its own assets (``<venue>/trade_gaps``, ...: :func:`venue_key`,
#: one group per venue), all on the same daily partitions, so a venue is backfilled, fails and
#: is checked on its own; the venue is a key prefix, not a partition dimension.
VENUES: tuple[str, ...] = tuple(select_venues(os.environ.get("TICKVAULT_VENUES")))


def venue_key(venue: str, name: str) -> dg.AssetKey:
    """The key of a per-venue asset: ``<venue>/<name>`` (e.g. ``bybit/trade_gaps``); the venue is
    the key prefix and the asset group, so each venue is one group in the UI lineage."""
    return dg.AssetKey([venue, name])


def venue_rest_asset(venue: str, retry_delay_s: int = 60) -> dict:
    """The ``dg.asset`` arguments every per-venue asset that calls the venue's REST shares: the
    venue's group, the ``venue_rest`` pool (concurrent REST runs bounded per instance), the
    ``database`` and venue resources, and a retry policy (2 retries, exponential back-off from
    ``retry_delay_s`` seconds, with jitter)."""
    return dict(group_name=venue, kinds={"python", "timescaledb"}, owners=["team:tickvault"],
                pool="venue_rest", required_resource_keys={"database", venue},
                retry_policy=dg.RetryPolicy(max_retries=2, delay=retry_delay_s,
                                            backoff=dg.Backoff.EXPONENTIAL,
                                            jitter=dg.Jitter.PLUS_MINUS))


def records_private_data(venue: str) -> bool:
    """True when the registered ``venue`` reconciles trading accounts' private data over REST
    (it implements ``Venue.reconcile_account``: Bybit)."""
    from collector_daemon.venues import Venue, get_venue
    return type(get_venue(venue)).reconcile_account is not Venue.reconcile_account


def accounts_partitions(venue: str) -> dg.DynamicPartitionsDefinition:
    """The account dimension of ``venue``'s private assets: one partition per ``accounts`` label
    (unique per venue), added and removed by the ``accounts_partitions`` sensor. Named
    ``<venue>_accounts``."""
    return dg.DynamicPartitionsDefinition(name=f"{venue}_accounts")


def day_account_partitions(venue: str) -> dg.MultiPartitionsDefinition:
    """UTC day x account label of ``venue``: keys ``<label>|<YYYY-MM-DD>`` (Dagster sorts the
    dimensions by name: ``account``, ``date``)."""
    return dg.MultiPartitionsDefinition({"date": daily, "account": accounts_partitions(venue)})
