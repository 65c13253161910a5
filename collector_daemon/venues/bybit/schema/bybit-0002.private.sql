-- Bybit private data of trading accounts (collector_daemon/venues/bybit/private.py).
-- * accounts: the accounts the collector serves (any venue). Secrets never live here:
--   secret_ref says where the secret is read from, env:VARIABLE or file:/path (a Docker or
--   Kubernetes secrets mount). The collector loads the enabled ones.
-- * bybit_executions: every fill of the execution stream (and of /v5/execution/list), once per
--   account: unique on (account_id, exec_id) (exchange_ts = execTime is part of the key because a
--   hypertable's unique keys include its time column; an execId has one execTime). Values numeric
--   (exact decimal strings, see bybit-0001).
-- depends: bybit-0001.public

CREATE TABLE IF NOT EXISTS accounts (
    account_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label       text        NOT NULL,
    venue       text        NOT NULL,
    key_id      text        NOT NULL,
    secret_ref  text        NOT NULL,
    run_tag     text,
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_secret_ref_check CHECK (secret_ref ~ '^(env|file):.+'),
    CONSTRAINT accounts_venue_key_unique UNIQUE (venue, key_id),
    CONSTRAINT accounts_label_unique UNIQUE (venue, label)
);
COMMENT ON TABLE accounts IS 'Trading accounts whose private streams are recorded; the secret itself is never stored here.';
COMMENT ON COLUMN accounts.key_id IS 'The API key (public part).';
COMMENT ON COLUMN accounts.secret_ref IS 'Where the API secret is read from: env:VARIABLE or file:/path.';
COMMENT ON COLUMN accounts.run_tag IS 'Optional run/strategy tag stored with every private row of the account.';

CREATE OR REPLACE FUNCTION tickvault_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS accounts_touch ON accounts;
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION tickvault_touch_updated_at();

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
