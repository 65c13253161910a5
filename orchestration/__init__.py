"""tickvault orchestration: Dagster assets, checks, schedules and sensors for everything that is
not streaming (instrument universe, gap audits, REST backfill, candles, exports, retention)."""
