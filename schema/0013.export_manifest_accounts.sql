-- Per-account partitions of the private tables in the Parquet export (issue 11): a private table
-- (one with an account_id column, e.g. bybit_executions) is exported per (venue, account, table,
-- day) under venue=<venue>/account=<account_id>/, so one tenant's files can be shared alone.
-- * export_manifest.account_id: the account of the partition; NULL for a public table's
--   partition (quotes, trades, candles, bybit_tickers, ...), which is per venue.
-- * The key becomes (table_name, day, venue, account_id) with NULLS NOT DISTINCT (PostgreSQL 15+):
--   a public partition (account_id NULL) stays one row per (table, day, venue), and the export's
--   INSERT ... ON CONFLICT (table_name, day, venue, account_id) replaces it. A primary key cannot
--   hold a nullable column, hence a unique constraint in its place.
-- depends: 0012.history_candles

ALTER TABLE export_manifest ADD COLUMN IF NOT EXISTS account_id bigint;
ALTER TABLE export_manifest DROP CONSTRAINT IF EXISTS export_manifest_pkey;
ALTER TABLE export_manifest DROP CONSTRAINT IF EXISTS export_manifest_partition_key;
ALTER TABLE export_manifest ADD CONSTRAINT export_manifest_partition_key
    UNIQUE NULLS NOT DISTINCT (table_name, day, venue, account_id);
COMMENT ON COLUMN export_manifest.account_id IS 'Account of a private table''s partition (venue=<venue>/account=<account_id>/); NULL for a public table''s partition (per venue).';
