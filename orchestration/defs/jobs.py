"""Asset jobs the schedules and sensors launch (checks of the selected assets are included
unless excluded). Layout of ``defs/``: ``assets/`` holds the assets (one module per asset group),
and jobs, schedules, sensors and asset checks live here, in ``schedules.py``, ``sensors.py`` and
``checks.py``, split by kind."""

import dagster as dg

universe_job = dg.define_asset_job(
    "universe_job", selection=dg.AssetSelection.assets("instrument_universe"),
    description="Refresh the instrument universe and the subscription set.")

#: The 15-minute audit of the current day: the audit plus the cheap freshness check (the
#: full-day scans run nightly).
gap_audit_job = dg.define_asset_job(
    "gap_audit_job",
    selection=dg.AssetSelection.assets("trade_gaps").without_checks()
    | dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("trade_gaps"), "quote_freshness")),
    description="Gap audit of one day (data_gaps) with the quote freshness check.")

nightly_job = dg.define_asset_job(
    "nightly_job",
    selection=dg.AssetSelection.assets("trade_gaps", "trades_backfill", "candles"),
    description="Final audit, REST backfill, candles and every data-quality check of one day.")

trades_backfill_job = dg.define_asset_job(
    "trades_backfill_job", selection=dg.AssetSelection.assets("trades_backfill"),
    description="REST backfill of one day's open trade gaps, with its checks.")

nightly_export_job = dg.define_asset_job(
    "nightly_export_job", selection=dg.AssetSelection.assets("parquet_export"),
    description="Export one (day, table) partition to Parquet, with its checks.")

history_import_job = dg.define_asset_job(
    "history_import_job", selection=dg.AssetSelection.assets("history_import"),
    description="Bulk import of one exchange history file (run config names it).")

retention_job = dg.define_asset_job(
    "retention_job", selection=dg.AssetSelection.assets("tick_retention"),
    description="Drop verified-exported days past the retention age.")
