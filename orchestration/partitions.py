"""Partition definitions shared by every asset (one place, UTC)."""

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
#: known ones. Per-venue results are rows (a ``venue`` column in data_gaps, candles, ...) and
#: per-venue metadata, not a partition dimension: a day is complete when every venue is, and a
#: date x venue grid would multiply runs and break single-key schedules and backfills.
VENUES: tuple[str, ...] = tuple(select_venues(os.environ.get("TICKVAULT_VENUES")))
