"""Asset jobs the schedules and sensors launch (checks of the selected assets are included
unless excluded). Layout of ``defs/``: ``assets/`` holds the assets (one module per kind of
asset, each a factory building one asset per venue), and jobs, schedules, sensors and asset
checks live here, in ``schedules.py``, ``sensors.py`` and ``checks.py``, split by kind.

The daily jobs select every recorded venue's asset of a kind (``<venue>/trade_gaps``, ...): one
run per day covers the venues; a sensor or a UI launch can select one venue's asset only.
"""

import dagster as dg

from orchestration.defs.assets.private import PRIVATE_VENUES
from orchestration.defs.checks import VENUE_CHECKS
from orchestration.partitions import VENUES, venue_key


def per_venue(name: str) -> dg.AssetSelection:
    """The ``<venue>/<name>`` assets of every recorded venue."""
    return dg.AssetSelection.assets(*(venue_key(v, name) for v in VENUES))


universe_job = dg.define_asset_job(
    "universe_job", selection=per_venue("instrument_universe"),
    description="Refresh every venue's instrument universe and subscription set.")

#: The 15-minute audit of the current day: the audits plus the cheap freshness checks (the
#: full-day scans run nightly).
gap_audit_job = dg.define_asset_job(
    "gap_audit_job",
    selection=per_venue("trade_gaps").without_checks()
    | dg.AssetSelection.checks(*(k for c in VENUE_CHECKS for k in c.check_keys
                                 if k.name == "quote_freshness")),
    description="Gap audit of one day per venue (data_gaps) with the quote freshness checks.")

nightly_job = dg.define_asset_job(
    "nightly_job",
    selection=per_venue("trade_gaps") | per_venue("trades_backfill") | dg.AssetSelection.assets("candles"),
    description="Final audit, REST backfill, candles and every data-quality check of one day.")

trades_backfill_job = dg.define_asset_job(
    "trades_backfill_job", selection=per_venue("trades_backfill"),
    description="REST backfill of one day's open trade gaps (a run request selects the venue), with "
                "its checks.")

#: Per venue with private data: ``<venue>_private_reconciliation_job`` (its assets are partitioned
#: by day x that venue's accounts, so one job per venue).
PRIVATE_JOBS: dict = {
    v: dg.define_asset_job(
        f"{v}_private_reconciliation_job",
        selection=dg.AssetSelection.assets(venue_key(v, "private_reconciliation")),
        description=f"REST reconciliation of one {v} account for one day, with its checks.")
    for v in PRIVATE_VENUES}
PRIVATE_JOB_LIST = list(PRIVATE_JOBS.values())

nightly_export_job = dg.define_asset_job(
    "nightly_export_job", selection=dg.AssetSelection.assets("parquet_export"),
    description="Export one (day, table) partition to Parquet, with its checks.")

history_import_job = dg.define_asset_job(
    "history_import_job", selection=dg.AssetSelection.assets("history_import"),
    description="Bulk import of one exchange history file (run config names it).")

retention_job = dg.define_asset_job(
    "retention_job", selection=dg.AssetSelection.assets("tick_retention"),
    description="Drop verified-exported days past the retention age.")
