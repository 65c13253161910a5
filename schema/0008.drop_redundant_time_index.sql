-- TimescaleDB gives every hypertable a default (exchange_ts DESC) index. The natural keys of
-- quotes and trades already lead with exchange_ts, so that index only costs ingest: PostgreSQL
-- CPU per row 7.5 -> 6.0 µs in the ingest benchmark (docs/benchmarks.md). Descending scans use
-- the natural key backwards. On plain PostgreSQL these indexes never existed.
-- depends: 0007.export_manifest
DROP INDEX IF EXISTS quotes_exchange_ts_idx;
DROP INDEX IF EXISTS trades_exchange_ts_idx;
