-- Features of the Timescale-licensed (TSL) edition: native compression of old chunks.
-- Applied only when the server runs that edition (timescaledb.license = 'timescale', as in the
-- official timescale/timescaledb Docker image). The Apache-2 edition built on machines without
-- the image cannot run them; there this step logs a NOTICE and does nothing.
-- Compression keeps the natural keys valid: segment by (venue, instrument_name), order by time.
-- depends: 0002.timescaledb
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND current_setting('timescaledb.license', true) = 'timescale' THEN
        ALTER TABLE quotes SET (timescaledb.compress,
                                timescaledb.compress_segmentby = 'venue, instrument_name',
                                timescaledb.compress_orderby = 'exchange_ts');
        PERFORM add_compression_policy('quotes', INTERVAL '7 days', if_not_exists => true);
        ALTER TABLE trades SET (timescaledb.compress,
                                timescaledb.compress_segmentby = 'venue, instrument_name',
                                timescaledb.compress_orderby = 'exchange_ts, trade_id');
        PERFORM add_compression_policy('trades', INTERVAL '7 days', if_not_exists => true);
    ELSE
        RAISE NOTICE 'tickvault: Timescale-licensed features (compression policies) skipped: license is %',
            coalesce(current_setting('timescaledb.license', true), 'none (plain PostgreSQL)');
    END IF;
END
$$;
