-- Venues as plug-ins (docs/venues.md): streams are no longer a closed list, and the shared
-- trades table takes what the next venues send.
-- * data_gaps.stream: free text; the code validates it against the venue registry
--   (collector_daemon.core.gaps.insert_gap), a venue's own streams need no migration here.
-- * trades.source: 'csv' for trades imported from an exchange's downloadable files.
-- * trades.ord_type: the taker order's type where the venue says it (Kraken: limit, market).
-- * exchange_candles: candles as an exchange publishes them (Kraken OHLCVT files, REST OHLC,
--   WS ohlc; Bybit kline), kept apart from the candles computed from trades (`candles`), so
--   the two can be compared. `interval_minutes` is the exchange's interval; `interval_begin`
--   labels the candle (UTC); an open candle is updated in place until it closes.
-- depends: 0010.collector_stopped_at

ALTER TABLE data_gaps DROP CONSTRAINT IF EXISTS data_gaps_stream_check;
COMMENT ON COLUMN data_gaps.stream IS
    'A stream of the venue (collector_daemon.venues registry: quotes, trades, ...).';

ALTER TABLE trades DROP CONSTRAINT IF EXISTS trades_source_check;
ALTER TABLE trades ADD CONSTRAINT trades_source_check CHECK (source IN ('ws', 'rest', 'csv'));
ALTER TABLE trades ADD COLUMN IF NOT EXISTS ord_type text;
COMMENT ON COLUMN trades.source IS
    'ws = live stream, rest = recovered or backfilled by REST, csv = imported from the exchange''s files.';
COMMENT ON COLUMN trades.ord_type IS 'Type of the taker order where the venue reports it (Kraken: limit, market).';

CREATE TABLE IF NOT EXISTS exchange_candles (
    venue             text             NOT NULL,
    instrument_name   text             NOT NULL,
    interval_minutes  integer          NOT NULL,
    interval_begin    timestamptz      NOT NULL,
    open              double precision NOT NULL,
    high              double precision NOT NULL,
    low               double precision NOT NULL,
    close             double precision NOT NULL,
    vwap              double precision,
    volume            double precision NOT NULL,
    trade_count       integer,
    closed            boolean          NOT NULL,
    source            text             NOT NULL,
    receive_ts        timestamptz      NOT NULL,
    CONSTRAINT exchange_candles_source_check CHECK (source IN ('ws', 'rest', 'csv')),
    CONSTRAINT exchange_candles_interval_check CHECK (interval_minutes > 0),
    CONSTRAINT exchange_candles_pkey PRIMARY KEY (venue, instrument_name, interval_minutes, interval_begin)
);
COMMENT ON TABLE exchange_candles IS
    'OHLCV candles as the exchange publishes them (not computed here); compared with `candles` by a data-quality check.';
COMMENT ON COLUMN exchange_candles.closed IS 'false while the interval is still open (later messages update the row).';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('exchange_candles', by_range('interval_begin', INTERVAL '30 days'),
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
