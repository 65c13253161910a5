-- OHLCV candles per instrument derived from trades (Dagster asset `candles`, daily partitions).
-- One table for every width; `interval` is one of 1m, 5m, 15m, 1h, 1d. 1m candles are computed
-- from trades, the wider ones are rolled up from 1m. Buckets are aligned to UTC midnight and
-- labelled by their start; only buckets with at least one trade exist.
-- Units follow trades: prices in the instrument's price currency (options: base coin), volume =
-- sum(amount) (options: base coin; futures: USD), notional = sum(price * amount), vwap =
-- notional / volume.
-- On TimescaleDB the table is a hypertable on bucket_start (30-day chunks).
-- depends: 0005.gap_audit

CREATE TABLE IF NOT EXISTS candles (
    venue            text             NOT NULL,
    instrument_name  text             NOT NULL,
    interval         text             NOT NULL,
    bucket_start     timestamptz      NOT NULL,
    open             double precision NOT NULL,
    high             double precision NOT NULL,
    low              double precision NOT NULL,
    close            double precision NOT NULL,
    volume           double precision NOT NULL,
    notional         double precision NOT NULL,
    vwap             double precision,
    trade_count      integer          NOT NULL,
    first_trade_ts   timestamptz      NOT NULL,
    last_trade_ts    timestamptz      NOT NULL,
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT candles_interval_check CHECK (interval IN ('1m', '5m', '15m', '1h', '1d')),
    CONSTRAINT candles_pkey PRIMARY KEY (venue, instrument_name, interval, bucket_start)
);
CREATE INDEX IF NOT EXISTS candles_bucket_idx ON candles (interval, bucket_start);
COMMENT ON TABLE candles IS 'OHLCV per instrument and interval (1m from trades; 5m/15m/1h/1d rolled up from 1m).';
COMMENT ON COLUMN candles.interval IS 'Bucket width: 1m, 5m, 15m, 1h or 1d.';
COMMENT ON COLUMN candles.bucket_start IS 'Start of the bucket (UTC, aligned to midnight).';
COMMENT ON COLUMN candles.open IS 'Price of the first trade of the bucket (ordered by exchange_ts, trade_seq, trade_id).';
COMMENT ON COLUMN candles.volume IS 'Sum of trade amounts (options: base coin).';
COMMENT ON COLUMN candles.notional IS 'Sum of price * amount (options: base coin * price currency).';
COMMENT ON COLUMN candles.vwap IS 'Volume-weighted average price: notional / volume (NULL when volume is 0).';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('candles', by_range('bucket_start', INTERVAL '30 days'),
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
