"""Logic of the orchestration that works without Dagster: plain functions and SQL over the
tickvault database, using the collector's REST client, row types and writer (no copies).

Modules: :mod:`.days` (UTC day windows), :mod:`.universe` (subscription set and its
signalling), :mod:`.gaps` (daily gap audit), :mod:`.backfill` (REST recovery of trade gaps),
:mod:`.candles` (OHLCV), :mod:`.quality` (data-quality checks), :mod:`.observe` (freshness and
row counts of the collector's tables); :mod:`.export` and :mod:`.retention` (Parquet export and
retention).
"""
