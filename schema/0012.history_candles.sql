-- History imports and the full candle ladder (issue 12).
-- * candles.interval: 1m, 5m, 15m, 30m, 1h, 4h, 12h, 1d, 1w (orchestration/lib/candles.py).
--   1w buckets start on Monday 00:00 UTC (ISO weeks).
-- * trades.direction: NULL where the source does not say the taker side (Kraken's classic
--   time-and-sales CSV files carry only time, price and volume); ws and rest rows always have it.
-- depends: 0011.venue_streams

ALTER TABLE candles DROP CONSTRAINT IF EXISTS candles_interval_check;
ALTER TABLE candles ADD CONSTRAINT candles_interval_check
    CHECK (interval IN ('1m', '5m', '15m', '30m', '1h', '4h', '12h', '1d', '1w'));
COMMENT ON COLUMN candles.interval IS
    'Bucket width: 1m, 5m, 15m, 30m, 1h, 4h, 12h, 1d or 1w (weeks start Monday 00:00 UTC).';
COMMENT ON TABLE candles IS
    'OHLCV per instrument and interval (1m..1d from the day''s trades; 1w from the week''s trades; VWAP exact).';

ALTER TABLE trades ALTER COLUMN direction DROP NOT NULL;
COMMENT ON COLUMN trades.direction IS
    'Taker side: buy or sell; NULL when the source does not say (Kraken classic time-and-sales CSV).';
