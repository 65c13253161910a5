-- TimescaleDB step: when the extension can be loaded (timescaledb in shared_preload_libraries),
-- turn quotes and trades into hypertables on exchange_ts with 1-day chunks. On plain PostgreSQL
-- this migration is a no-op that says so in a NOTICE; `tickvault migrate` logs the mode it found.
-- depends: 0001.core
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('quotes', by_range('exchange_ts', INTERVAL '1 day'),
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('trades', by_range('exchange_ts', INTERVAL '1 day'),
                                  if_not_exists => true, migrate_data => true);
    ELSE
        RAISE NOTICE 'tickvault: timescaledb not loadable here; quotes and trades stay regular tables';
    END IF;
END
$$;
