-- Bybit v5 public data (collector_daemon/venues/bybit): tickers and trades of linear, option and
-- spot, hypertables on exchange_ts (1-day chunks) when TimescaleDB is loadable.
--
-- Values are `numeric`: Bybit sends every price, size, IV and greek as a decimal string; numeric
-- stores it exactly, scale included ("65114.20" reads back as 65114.20), where double precision
-- would round decimal fractions to the nearest binary float. Bybit's "" (no value) is NULL.
-- Instrument names: the Bybit symbol; spot symbols get the suffix -SPOT (spot and linear share
-- symbols such as BTCUSDT).
-- depends: 0002.timescaledb

CREATE TABLE IF NOT EXISTS bybit_tickers (
    venue                    text        NOT NULL,
    category                 text        NOT NULL,
    instrument_name          text        NOT NULL,
    exchange_ts              timestamptz NOT NULL,
    receive_ts               timestamptz NOT NULL,
    cross_seq                bigint,
    message_type             text        NOT NULL,
    fields                   text[]      NOT NULL,
    last_price               numeric,
    best_bid_price           numeric,
    best_bid_amount          numeric,
    best_ask_price           numeric,
    best_ask_amount          numeric,
    bid_iv                   numeric,
    ask_iv                   numeric,
    mark_price               numeric,
    mark_iv                  numeric,
    index_price              numeric,
    underlying_price         numeric,
    usd_index_price          numeric,
    open_interest            numeric,
    open_interest_value      numeric,
    funding_rate             numeric,
    funding_cap              numeric,
    funding_interval_hour    numeric,
    prev_price_24h           numeric,
    price_24h_pcnt           numeric,
    high_price_24h           numeric,
    low_price_24h            numeric,
    prev_price_1h            numeric,
    volume_24h               numeric,
    turnover_24h             numeric,
    delta                    numeric,
    gamma                    numeric,
    vega                     numeric,
    theta                    numeric,
    total_volume             numeric,
    total_turnover           numeric,
    change_24h               numeric,
    predicted_delivery_price numeric,
    basis                    numeric,
    basis_rate               numeric,
    delivery_fee_rate        numeric,
    pre_open_price           numeric,
    pre_qty                  numeric,
    tick_direction           text,
    delivery_time            text,
    cur_pre_listing_phase    text,
    next_funding_time        timestamptz,
    other                    jsonb,
    CONSTRAINT bybit_tickers_category_check CHECK (category IN ('linear', 'option', 'spot')),
    CONSTRAINT bybit_tickers_type_check CHECK (message_type IN ('snapshot', 'delta')),
    CONSTRAINT bybit_tickers_pkey PRIMARY KEY (exchange_ts, venue, category, instrument_name)
);
COMMENT ON TABLE bybit_tickers IS
    'Bybit tickers.{symbol}: one row per message holding the complete quote (linear: the snapshot merged with every delta since, per connection; option and spot: the snapshot).';
COMMENT ON COLUMN bybit_tickers.exchange_ts IS 'The message''s ts (ms, Bybit''s system time).';
COMMENT ON COLUMN bybit_tickers.cross_seq IS 'The message''s cs (cross sequence); NULL for options (not sent).';
COMMENT ON COLUMN bybit_tickers.fields IS 'Names of the data fields the message itself carried (a delta carries only the changed ones): with the row''s values they reconstruct the raw stream.';
COMMENT ON COLUMN bybit_tickers.best_bid_price IS 'bid1Price (linear, spot) or bidPrice (option); likewise best_bid_amount, best_ask_*.';
COMMENT ON COLUMN bybit_tickers.mark_iv IS 'markPriceIv (option).';
COMMENT ON COLUMN bybit_tickers.other IS 'Fields of the merged quote without a column of their own, as sent.';

CREATE TABLE IF NOT EXISTS bybit_trades (
    venue            text        NOT NULL,
    category         text        NOT NULL,
    instrument_name  text        NOT NULL,
    trade_id         text        NOT NULL,
    exchange_ts      timestamptz NOT NULL,
    receive_ts       timestamptz NOT NULL,
    price            numeric     NOT NULL,
    amount           numeric     NOT NULL,
    direction        text        NOT NULL,
    tick_direction   text,
    block_trade      boolean,
    rpi              boolean,
    cross_seq        bigint,
    mark_price       numeric,
    index_price      numeric,
    mark_iv          numeric,
    iv               numeric,
    source           text        NOT NULL,
    CONSTRAINT bybit_trades_category_check CHECK (category IN ('linear', 'option', 'spot')),
    CONSTRAINT bybit_trades_direction_check CHECK (direction IN ('buy', 'sell')),
    CONSTRAINT bybit_trades_source_check CHECK (source IN ('ws', 'rest')),
    CONSTRAINT bybit_trades_pkey PRIMARY KEY (exchange_ts, venue, category, instrument_name, trade_id)
);
COMMENT ON TABLE bybit_trades IS
    'Bybit publicTrade (options: publicTrade.{baseCoin}) and /v5/market/recent-trade: every trade once, keyed by trade id per instrument.';
COMMENT ON COLUMN bybit_trades.exchange_ts IS 'T: fill time (ms).';
COMMENT ON COLUMN bybit_trades.trade_id IS 'i (WebSocket) / execId (REST).';
COMMENT ON COLUMN bybit_trades.direction IS 'S: the taker''s side.';
COMMENT ON COLUMN bybit_trades.block_trade IS 'BT / isBlockTrade.';
COMMENT ON COLUMN bybit_trades.rpi IS 'RPI / isRPITrade: a retail price improvement trade.';
COMMENT ON COLUMN bybit_trades.cross_seq IS 'seq: cross sequence (several messages may share one).';
COMMENT ON COLUMN bybit_trades.mark_iv IS 'mIv (options); iv: the trade''s implied volatility; mark_price mP, index_price iP.';
COMMENT ON COLUMN bybit_trades.source IS 'ws = live stream, rest = recovered from recent-trade.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('bybit_tickers', by_range('exchange_ts', INTERVAL '1 day'),
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('bybit_trades', by_range('exchange_ts', INTERVAL '1 day'),
                                  if_not_exists => true, migrate_data => true);
    ELSE
        RAISE NOTICE 'tickvault: timescaledb not loadable here; bybit_tickers and bybit_trades stay regular tables';
    END IF;
END
$$;
