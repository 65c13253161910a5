-- Bybit private data of trading accounts (collector_daemon/venues/bybit/private.py).
-- * accounts (the accounts the collector serves, any venue; created here before) is venue-neutral:
--   schema/0017.venue_neutral_tables.
-- * bybit_executions: every fill of the execution stream (and of /v5/execution/list), once per
--   account: unique on (account_id, exec_id) (exchange_ts = execTime is part of the key because a
--   hypertable's unique keys include its time column; an execId has one execTime). Values numeric
--   (exact decimal strings, see bybit-0001).
-- depends: bybit-0001.public 0017.venue_neutral_tables

CREATE TABLE IF NOT EXISTS bybit_executions (
    venue              text        NOT NULL,
    account_id         bigint      NOT NULL REFERENCES accounts (account_id),
    run_tag            text,
    category           text        NOT NULL,
    instrument_name    text        NOT NULL,
    exec_id            text        NOT NULL,
    exchange_ts        timestamptz NOT NULL,
    receive_ts         timestamptz NOT NULL,
    side               text        NOT NULL,
    is_maker           boolean,
    seq                bigint,
    order_price        numeric,
    order_qty          numeric,
    leaves_qty         numeric,
    exec_fee           numeric,
    exec_price         numeric,
    exec_qty           numeric,
    exec_pnl           numeric,
    exec_value         numeric,
    fee_rate           numeric,
    trade_iv           numeric,
    mark_iv            numeric,
    mark_price         numeric,
    index_price        numeric,
    underlying_price   numeric,
    closed_size        numeric,
    order_id           text,
    order_link_id      text,
    order_type         text,
    stop_order_type    text,
    exec_type          text,
    block_trade_id     text,
    fee_currency       text,
    other              jsonb,
    source             text        NOT NULL,
    CONSTRAINT bybit_executions_category_check CHECK (category IN ('linear', 'option', 'spot', 'inverse')),
    CONSTRAINT bybit_executions_side_check CHECK (side IN ('buy', 'sell')),
    CONSTRAINT bybit_executions_source_check CHECK (source IN ('ws', 'rest')),
    CONSTRAINT bybit_executions_pkey PRIMARY KEY (exchange_ts, account_id, exec_id)
);
COMMENT ON TABLE bybit_executions IS 'Bybit private execution stream (and /v5/execution/list): every fill once per account.';
COMMENT ON COLUMN bybit_executions.exchange_ts IS 'execTime (ms).';
COMMENT ON COLUMN bybit_executions.seq IS 'Cross sequence; unique per symbol, not across symbols.';
COMMENT ON COLUMN bybit_executions.other IS 'Fields of the fill without a column of their own (extraFees, isLeverage, ...), as sent.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('bybit_executions', by_range('exchange_ts', INTERVAL '7 days'),
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
